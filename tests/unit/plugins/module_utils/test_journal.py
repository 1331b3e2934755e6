"""Change journal: atomic writes keep mode and owner, backups are taken once, restore is byte-identical."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError, atomic_write

STATE = "var/lib/exliar-vfio"


def tree(root) -> dict:
    """Everything below ``root``: path -> (type, mode, uid, gid, content or link target)."""
    out = {}
    root = str(root)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    body = handle.read()
            else:
                body = None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body)
    return out


def host_tree(root) -> dict:
    """:func:`tree` without the journal's own state."""
    return {path: entry for path, entry in tree(root).items() if not path.startswith("var")}


def put(root, rel, data: bytes, mode=0o644, owner=None):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    if owner:
        os.chown(path, *owner)
    return path


def read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def lines(root) -> list:
    with open(os.path.join(str(root), STATE, "journal.jsonl"), "rb") as handle:
        return handle.read().split(b"\n")


@pytest.fixture
def other_owner():
    """An owner that is not the default one for new files (any uid as root, else our own)."""
    if os.geteuid() == 0:
        return (1234, 2345)
    return (os.getuid(), os.getgid())


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_creates_parents_and_a_0644_file_whatever_the_umask(tmp_path):
    old_umask = os.umask(0o077)
    try:
        created = atomic_write(str(tmp_path / "a/b/f.conf"), b"x\n")
    finally:
        os.umask(old_umask)
    assert created == [str(tmp_path / "a"), str(tmp_path / "a/b")]
    assert read(tmp_path / "a/b/f.conf") == b"x\n"
    assert stat.S_IMODE(os.stat(tmp_path / "a/b/f.conf").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o755
    assert sorted(os.listdir(tmp_path / "a/b")) == ["f.conf"]


def test_atomic_write_keeps_the_existing_mode_and_owner(tmp_path, other_owner):
    path = put(tmp_path, "etc/f", b"old", mode=0o640, owner=other_owner)
    atomic_write(path, b"new")
    st = os.stat(path)
    assert read(path) == b"new"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, *other_owner)


def test_atomic_write_uses_the_given_mode_and_owner(tmp_path, other_owner):
    path = str(tmp_path / "f")
    atomic_write(path, b"new", mode="0600", uid=other_owner[0], gid=other_owner[1])
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, *other_owner)
    atomic_write(path, b"newer", mode=0o755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == other_owner


def test_atomic_write_refuses_to_replace_a_symlink_or_a_directory(tmp_path):
    put(tmp_path, "real", b"r")
    os.symlink("real", tmp_path / "link")
    (tmp_path / "d").mkdir()
    before = tree(tmp_path)
    with pytest.raises(JournalError, match="symlink"):
        atomic_write(str(tmp_path / "link"), b"x")
    with pytest.raises(JournalError, match="not a regular file"):
        atomic_write(str(tmp_path / "d"), b"x")
    assert tree(tmp_path) == before


def test_a_failed_rename_leaves_no_temp_file_and_no_new_directory(tmp_path, monkeypatch):
    path = put(tmp_path, "boot/grub.cfg", b"old")
    before = tree(tmp_path)

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(JournalError, match=r"cannot write .*boot/grub.cfg: Read-only file system; is .* mounted read-only"):
        atomic_write(path, b"new")
    with pytest.raises(JournalError):
        atomic_write(str(tmp_path / "new/dirs/f"), b"new")
    assert tree(tmp_path) == before


def test_a_parent_that_is_a_file_is_a_clear_error_even_as_root(tmp_path):
    put(tmp_path, "etc/modprobe.d", b"a file, not a directory")
    before = tree(tmp_path)
    with pytest.raises(JournalError, match="modprobe.d/sub/vfio.conf: .*not a directory"):
        atomic_write(str(tmp_path / "etc/modprobe.d/sub/vfio.conf"), b"x")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- Journal: writes


def test_write_then_the_same_write_is_no_change(tmp_path):
    journal = Journal(str(tmp_path))
    first = journal.write_file("configure", "/etc/modprobe.d/vfio.conf", b"options vfio-pci ids=10de:1e87\n")
    assert first == {
        "changed": True,
        "path": "/etc/modprobe.d/vfio.conf",
        "diff": {"before": "", "after": "options vfio-pci ids=10de:1e87\n",
                 "before_header": "/etc/modprobe.d/vfio.conf", "after_header": "/etc/modprobe.d/vfio.conf"},
    }
    assert read(tmp_path / "etc/modprobe.d/vfio.conf") == b"options vfio-pci ids=10de:1e87\n"
    second = journal.write_file("configure", "/etc/modprobe.d/vfio.conf", b"options vfio-pci ids=10de:1e87\n")
    assert second["changed"] is False
    assert len(journal.active()) == 1


def test_a_new_mode_alone_is_a_change(tmp_path):
    put(tmp_path, "etc/x", b"same", mode=0o600)
    journal = Journal(str(tmp_path))
    assert journal.write_file("s", "/etc/x", b"same")["changed"] is False
    assert journal.write_file("s", "/etc/x", b"same", mode="0644")["changed"] is True
    assert stat.S_IMODE(os.stat(tmp_path / "etc/x").st_mode) == 0o644
    assert journal.write_file("s", "/etc/x", b"same", mode=0o644)["changed"] is False
    assert journal.active()[0]["mode"] == "0600"


def test_the_record_says_what_changed(tmp_path, other_owner):
    put(tmp_path, "etc/default/grub", b"GRUB_CMDLINE_LINUX=\"\"\n", mode=0o640, owner=other_owner)
    journal = Journal(str(tmp_path))
    journal.write_file("bootloader", "/etc/default/grub", b"GRUB_CMDLINE_LINUX=\"intel_iommu=on\"\n")
    journal.write_file("configure", "/etc/modules-load.d/vfio.conf", b"vfio-pci\n")
    grub, modules = journal.active(kind="file")
    assert grub["path"] == "/etc/default/grub"
    assert (grub["stage"], grub["kind"], grub["action"], grub["existed"]) == ("bootloader", "file", "write", True)
    assert (grub["mode"], grub["uid"], grub["gid"]) == ("0640", *other_owner)
    assert grub["backup"] and read(tmp_path / STATE / "backups" / grub["backup"]) == b"GRUB_CMDLINE_LINUX=\"\"\n"
    assert len(grub["sha256_before"]) == 64 and grub["sha256_after"] != grub["sha256_before"]
    assert (modules["existed"], modules["backup"], modules["mode"], modules["uid"], modules["sha256_before"]) == (False, None, None, None, None)
    assert modules["created_dirs"] == ["/etc/modules-load.d"]
    st = os.stat(tmp_path / "etc/default/grub")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, *other_owner)


def test_journal_lines_are_json_objects_with_increasing_seq(tmp_path):
    journal = Journal(str(tmp_path))
    journal.write_file("a", "/etc/one", b"1")
    journal.record("a", "device", address="0000:01:00.0", original_driver="nvidia", driver="vfio-pci")
    journal.write_file("a", "/etc/one", b"2")
    journal.remove_file("a", "/etc/one")
    journal.mark_restored("a")
    raw = lines(tmp_path)
    assert raw[-1] == b""  # every record ends with a newline
    records = [json.loads(line) for line in raw[:-1]]
    assert [rec["seq"] for rec in records] == [1, 2, 3, 4, 5]
    assert [rec["kind"] for rec in records] == ["file", "device", "file", "file", "restore"]
    assert records[-1] == {"seq": 5, "time": records[-1]["time"], "stage": "a", "kind": "restore", "upto": 4}
    assert all(rec["time"].endswith("+00:00") for rec in records)


def test_check_mode_writes_nothing_anywhere_and_answers_like_a_real_run(tmp_path):
    put(tmp_path, "etc/default/grub", b"old\n", mode=0o600)
    put(tmp_path, "etc/modprobe.d/nvidia.conf", b"options nvidia-drm modeset=1\n")
    journal = Journal(str(tmp_path))
    before = tree(tmp_path)
    checks = [
        journal.write_file("s", "/etc/default/grub", b"new\n", check_mode=True),
        journal.write_file("s", "/etc/new/dir/f.conf", b"created\n", check_mode=True),
        journal.remove_file("s", "/etc/modprobe.d/nvidia.conf", check_mode=True),
    ]
    assert tree(tmp_path) == before
    assert not (tmp_path / "var").exists()
    real = [
        journal.write_file("s", "/etc/default/grub", b"new\n"),
        journal.write_file("s", "/etc/new/dir/f.conf", b"created\n"),
        journal.remove_file("s", "/etc/modprobe.d/nvidia.conf"),
    ]
    assert checks == real

    changed = tree(tmp_path)
    planned = journal.restore_files("s", check_mode=True)
    assert journal.mark_restored("s", check_mode=True) is None
    assert tree(tmp_path) == changed
    assert planned == journal.restore_files("s")


def test_the_original_is_backed_up_once_across_writes(tmp_path):
    put(tmp_path, "etc/default/grub", b"original\n")
    journal = Journal(str(tmp_path))
    journal.write_file("s", "/etc/default/grub", b"first\n")
    journal.write_file("s", "/etc/default/grub", b"second\n")
    first, second = journal.active()
    assert os.listdir(tmp_path / STATE / "backups") == [first["backup"]]
    assert read(tmp_path / STATE / "backups" / first["backup"]) == b"original\n"
    assert second["backup"] is None and second["existed"] is True
    assert journal.original("/etc/default/grub") == first
    assert journal.original("/etc/other") is None


# --------------------------------------------------------------------------- Journal: restore


def test_restore_is_byte_identical_and_removes_what_it_created(tmp_path, other_owner):
    put(tmp_path, "etc/default/grub", b"\x00binary\xff original\n", mode=0o600, owner=other_owner)
    put(tmp_path, "etc/modprobe.d/blacklist.conf", b"blacklist nouveau\n")
    before = host_tree(tmp_path)
    journal = Journal(str(tmp_path))
    journal.write_file("s", "/etc/default/grub", b"changed once\n", mode=0o644)
    journal.write_file("s", "/etc/default/grub", b"changed twice\n")
    journal.write_file("s", "/etc/dracut.conf.d/vfio.conf", b"add_drivers+=\" vfio-pci \"\n")
    journal.write_file("s", "/etc/modprobe.d/vfio.conf", b"options vfio-pci\n")
    journal.remove_file("s", "/etc/modprobe.d/blacklist.conf")
    assert host_tree(tmp_path) != before

    results = journal.restore_files("s")
    assert host_tree(tmp_path) == before  # bytes, mode, owner; dracut.conf.d is gone again
    assert [res["path"] for res in results] == [
        "/etc/modprobe.d/blacklist.conf", "/etc/modprobe.d/vfio.conf", "/etc/dracut.conf.d/vfio.conf", "/etc/default/grub"]
    assert all(res["changed"] for res in results)
    assert results[0]["diff"] == {"before": "", "after": "blacklist nouveau\n", "before_header": "/etc/modprobe.d/blacklist.conf",
                                  "after_header": "/etc/modprobe.d/blacklist.conf"}
    assert results[1]["diff"]["after"] == "" and results[1]["diff"]["before"] == "options vfio-pci\n"
    assert not any(res["drifted"] for res in results)
    # a second restore finds everything in place
    assert [res["changed"] for res in journal.restore_files("s")] == [False, False, False, False]


def test_restore_brings_back_a_removed_file(tmp_path, other_owner):
    put(tmp_path, "etc/modprobe.d/nvidia.conf", b"options nvidia-drm modeset=1\n", mode=0o640, owner=other_owner)
    before = host_tree(tmp_path)
    journal = Journal(str(tmp_path))
    assert journal.remove_file("s", "/etc/modprobe.d/nvidia.conf")["changed"] is True
    assert journal.remove_file("s", "/etc/modprobe.d/nvidia.conf")["changed"] is False
    assert not (tmp_path / "etc/modprobe.d/nvidia.conf").exists()
    journal.restore_files("s")
    assert host_tree(tmp_path) == before


def test_restore_reports_a_file_someone_else_changed(tmp_path):
    journal = Journal(str(tmp_path))
    journal.write_file("s", "/etc/f", b"ours")
    put(tmp_path, "etc/f", b"theirs")
    (result,) = journal.restore_files("s")
    assert result["changed"] is True and result["drifted"] is True
    assert not (tmp_path / "etc/f").exists()


def test_restoring_one_stage_leaves_the_others(tmp_path):
    put(tmp_path, "etc/default/grub", b"original")
    journal = Journal(str(tmp_path))
    journal.write_file("configure", "/etc/modprobe.d/vfio.conf", b"x")
    journal.write_file("bootloader", "/etc/default/grub", b"bootloader's")
    journal.write_file("configure", "/etc/default/grub", b"configure's")
    journal.restore_files("configure")
    journal.mark_restored("configure")
    assert read(tmp_path / "etc/default/grub") == b"bootloader's"
    assert not (tmp_path / "etc/modprobe.d").exists()
    assert [rec["stage"] for rec in journal.active()] == ["bootloader"]
    assert journal.original("/etc/default/grub")["stage"] == "bootloader"
    journal.restore_files("bootloader")
    assert read(tmp_path / "etc/default/grub") == b"original"


def test_after_mark_restored_the_next_write_backs_up_the_new_original(tmp_path):
    put(tmp_path, "etc/default/grub", b"original")
    journal = Journal(str(tmp_path))
    journal.write_file("s", "/etc/default/grub", b"ours")
    journal.record("s", "device", address="0000:01:00.0", original_driver="nvidia")
    journal.restore_files("s")
    restore = journal.mark_restored("s")
    assert restore["kind"] == "restore" and restore["upto"] == 2
    assert journal.active("s") == [] and journal.original("/etc/default/grub") is None
    assert journal.mark_restored("s") is None  # nothing active: nothing appended
    assert len(journal.records()) == 3

    put(tmp_path, "etc/default/grub", b"edited by the admin since")
    journal.write_file("s", "/etc/default/grub", b"ours again")
    (rec,) = journal.active("s")
    assert read(tmp_path / STATE / "backups" / rec["backup"]) == b"edited by the admin since"
    assert len(os.listdir(tmp_path / STATE / "backups")) == 2
    journal.restore_files("s")
    assert read(tmp_path / "etc/default/grub") == b"edited by the admin since"


def test_active_filters_by_stage_and_kind(tmp_path):
    journal = Journal(str(tmp_path))
    assert journal.active() == [] and journal.restore_files("s") == []
    assert not (tmp_path / "var").exists()  # reading an absent journal creates nothing
    plan = journal.record("plan", "plan", devices=["0000:01:00.0"])
    assert (plan["seq"], plan["stage"], plan["kind"], plan["devices"]) == (1, "plan", "plan", ["0000:01:00.0"])
    journal.record("bind", "device", address="0000:01:00.0", original_driver="nvidia")
    journal.record("bind", "plugin", plugin="nvidia", operation="hide")
    assert [rec["kind"] for rec in journal.active("bind")] == ["device", "plugin"]
    assert [rec["seq"] for rec in journal.active(kind="plugin")] == [3]


def test_record_refuses_the_journal_s_own_fields_and_kinds(tmp_path):
    journal = Journal(str(tmp_path))
    with pytest.raises(JournalError, match="write_file"):
        journal.record("s", "file", path="/etc/x")
    with pytest.raises(JournalError, match="seq"):
        journal.record("s", "plugin", seq=7)
    with pytest.raises(JournalError, match="not JSON|not JSON serializable|JSON"):
        journal.record("s", "plugin", value=object())
    assert journal.records() == []


# --------------------------------------------------------------------------- Journal: errors and safety


def test_a_corrupt_journal_line_says_where_and_how_to_recover(tmp_path):
    journal = Journal(str(tmp_path))
    journal.write_file("s", "/etc/f", b"x")
    with open(tmp_path / STATE / "journal.jsonl", "ab") as handle:
        handle.write(b'{"seq": 2, "stage": "s", "kind": "fi\n')
    path = str(tmp_path / STATE / "journal.jsonl")
    with pytest.raises(JournalError) as info:
        journal.active()
    message = str(info.value)
    assert f"{path} line 2 is corrupt" in message
    assert f"mv {path} {path}.corrupt" in message and "backups/" in message
    with pytest.raises(JournalError, match="line 2"):
        journal.write_file("s", "/etc/f", b"y")
    assert read(tmp_path / "etc/f") == b"x"


@pytest.mark.parametrize("path", ["/etc/../root/.ssh/authorized_keys", "etc/modprobe.d/x.conf", "", "/", "/etc/x\0"])
def test_relative_dotdot_and_odd_paths_are_refused(tmp_path, path):
    journal = Journal(str(tmp_path))
    with pytest.raises(JournalError):
        journal.write_file("s", path, b"x")
    with pytest.raises(JournalError):
        journal.remove_file("s", path)
    assert os.listdir(tmp_path) == []


def test_a_symlink_is_followed_inside_the_root_as_in_a_chroot(tmp_path):
    put(tmp_path, "usr/lib/os-release", b"ID=debian\n")
    os.makedirs(tmp_path / "etc")
    os.symlink("/usr/lib/os-release", tmp_path / "etc/os-release")  # absolute: means <root>/usr/lib/os-release
    journal = Journal(str(tmp_path))
    result = journal.write_file("s", "/etc/os-release", b"ID=changed\n")
    assert result["path"] == "/etc/os-release" and result["changed"] is True
    assert os.readlink(tmp_path / "etc/os-release") == "/usr/lib/os-release"
    assert read(tmp_path / "usr/lib/os-release") == b"ID=changed\n"
    assert journal.active()[0]["path"] == "/usr/lib/os-release"
    assert journal.original("/etc/os-release")["path"] == "/usr/lib/os-release"
    journal.restore_files("s")
    assert read(tmp_path / "usr/lib/os-release") == b"ID=debian\n"


def test_a_symlink_leading_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    outside = put(tmp_path, "outside/secret", b"do not touch")
    os.makedirs(root / "etc")
    os.symlink("../../outside/secret", root / "etc/escape")
    os.symlink("../../outside", root / "etc/dir")
    journal = Journal(str(root))
    for path in ("/etc/escape", "/etc/dir/secret"):
        with pytest.raises(JournalError, match="leads out of"):
            journal.write_file("s", path, b"x")
    assert read(outside) == b"do not touch"
    assert not (root / "var").exists()


def test_an_unwritable_root_is_a_clear_error_and_leaves_nothing_behind(tmp_path):
    put(tmp_path, "var", b"a file where /var should be")
    before = tree(tmp_path)
    journal = Journal(str(tmp_path))
    with pytest.raises(JournalError, match=r"cannot create the change journal in .*var/lib/exliar-vfio.*writable"):
        journal.write_file("s", "/etc/modprobe.d/vfio.conf", b"x")
    with pytest.raises(JournalError):
        journal.record("s", "plugin", operation="x")
    assert tree(tmp_path) == before


def test_a_failed_write_keeps_no_backup_and_no_record(tmp_path, monkeypatch):
    target = put(tmp_path, "boot/loader/entries/debian.conf", b"options quiet\n")
    journal = Journal(str(tmp_path))
    journal.record("s", "plan", devices=[])
    before = tree(tmp_path)
    real_replace = os.replace

    def boot_is_read_only(src, dst):
        if dst == target:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", boot_is_read_only)
    with pytest.raises(JournalError, match="debian.conf: Read-only file system; is .* mounted read-only"):
        journal.write_file("s", "/boot/loader/entries/debian.conf", b"options quiet intel_iommu=on\n")
    assert tree(tmp_path) == before
    assert [rec["kind"] for rec in journal.records()] == ["plan"]


def _append_records(root: str, name: str, count: int) -> None:
    journal = Journal(root)
    for number in range(count):
        journal.record("bind", "plugin", writer=name, number=number, padding="x" * 3000)


def test_two_processes_appending_at_once_keep_every_line_intact(tmp_path):
    count = 60
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_records, args=(str(tmp_path), name, count)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    raw = lines(tmp_path)
    assert raw[-1] == b""
    records = [json.loads(line) for line in raw[:-1]]
    assert [rec["seq"] for rec in records] == list(range(1, 2 * count + 1))
    for name in ("a", "b"):
        assert [rec["number"] for rec in records if rec["writer"] == name] == list(range(count))
