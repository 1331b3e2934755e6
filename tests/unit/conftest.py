"""Fixtures for the unit tests (the collection loader and lab/ on sys.path come from tests/conftest.py)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def sysroot_base(tmp_path_factory):
    """Directory the sysroots are built in.

    A sysroot is a few hundred small files; on a busy disk building one takes ten times longer
    than in memory, so use /dev/shm when there is one (removed at the end of the session).
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="exliar-vfio-unit-", dir=shm))
        yield base
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("sysroots")


@pytest.fixture
def make_sysroot(sysroot_base):
    """``make_sysroot(profile_dict=None, **sections)`` -> path of a freshly built sysroot.

    Without a profile the base desktop of :mod:`helpers` is used, with ``sections`` applied
    (see :func:`helpers.profile`). Every call builds into its own directory, so a test may
    mutate what it gets.
    """
    made = []

    def make(profile_dict=None, **sections):
        p = profile_dict if profile_dict is not None else helpers.profile(**sections)
        out = Path(tempfile.mkdtemp(dir=sysroot_base)) / "root"
        made.append(out.parent)
        return helpers.build(p, out)

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def desktop_root(sysroot_base):
    """The base desktop, built once with a pci.ids database. READ ONLY: do not mutate."""
    root = helpers.build(helpers.profile(), sysroot_base / "desktop")
    helpers.write(root, "usr/share/misc/pci.ids", helpers.PCI_IDS)
    return root


@pytest.fixture(scope="session")
def desktop_facts(desktop_root):
    """gather_facts() of :func:`desktop_root` (shared: do not mutate)."""
    from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

    return gather_facts(str(desktop_root))
