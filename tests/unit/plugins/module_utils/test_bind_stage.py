"""The binding stage writes its files all or nothing."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _bind_stage as stage
from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import MODPROBE_CONF, OVERRIDE_SCRIPT, PLAN_RECORD
from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError


class FailingAt(Journal):
    """A journal whose write of one path fails after the others went through (a full disk, say)."""

    def __init__(self, root, fail_path):
        super().__init__(root)
        self.fail_path = fail_path

    def write_file(self, stage, path, data, mode=None, check_mode=False):  # pylint: disable=redefined-outer-name
        if path == self.fail_path and data != b"keep\n":
            raise JournalError(f"cannot write {path}: No space left on device")
        return super().write_file(stage, path, data, mode=mode, check_mode=check_mode)


def test_a_failed_write_puts_back_the_files_written_before_it(tmp_path):
    conf = tmp_path / MODPROBE_CONF.lstrip("/")
    conf.parent.mkdir(parents=True)
    conf.write_text("keep\n")
    files = {MODPROBE_CONF: {"content": "new\n", "mode": 0o644}, OVERRIDE_SCRIPT: {"content": "#!/bin/sh\n", "mode": 0o755},
             PLAN_RECORD: {"content": "{}\n", "mode": 0o644}}
    journal = FailingAt(str(tmp_path), PLAN_RECORD)
    with pytest.raises(JournalError, match=r"No space left.*put back: .*exliar-vfio-pci-override, /etc/modprobe.d/exliar-vfio.conf"):
        stage._file_results(journal, str(tmp_path), files, check_mode=False)  # pylint: disable=protected-access
    assert conf.read_text() == "keep\n"
    assert not (tmp_path / OVERRIDE_SCRIPT.lstrip("/")).exists()
    assert not (tmp_path / PLAN_RECORD.lstrip("/")).exists()
