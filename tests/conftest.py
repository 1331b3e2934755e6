"""Test set-up: load the collection from the clone through Ansible's collection loader."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".collections"
link = COLLECTIONS / "ansible_collections" / "exliar" / "vfio"
if not link.exists():
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("../../..", link)

from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402

_AnsibleCollectionFinder(paths=[str(COLLECTIONS)])._install()
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(REPO / "tests" / "lib"))
