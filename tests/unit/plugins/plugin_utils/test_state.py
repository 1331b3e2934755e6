"""Plugin state that outlives a task: storage packing, the run directory, and a host's session across tasks."""
from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as store
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import run_stage_hooks
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import Approvals, hash_manifest, plugin_digest
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import finish_run, open_session


# ---- packing storage ---------------------------------------------------------------------------

def test_pack_and_unpack_round_trip():
    storage = {"n": 3, "l": [1, {"a": (2, 3)}], "s": {"x"}, "none": None}
    blobs, warnings = store.pack_storage(storage)
    assert warnings == [] and sorted(blobs) == sorted(storage)
    assert all(isinstance(b, bytes) for b in blobs.values())
    restored, warnings = store.unpack_storage(blobs)
    assert restored == storage and warnings == []


def test_an_unpicklable_value_is_a_warning_not_a_crash():
    storage = {"lock": threading.Lock(), "kept": [1, 2]}
    blobs, warnings = store.pack_storage(storage)
    assert list(blobs) == ["kept"]
    assert len(warnings) == 1
    assert warnings[0].startswith("storage key 'lock' (lock) cannot be kept after this stage: ")
    assert "pickle" in warnings[0]
    restored, warnings = store.unpack_storage(blobs)
    assert restored == {"kept": [1, 2]} and warnings == []


def test_a_value_that_cannot_be_restored_is_a_warning_not_a_crash():
    module = types.ModuleType("exliar_vfio_test_gone")
    exec("class Gone:\n    pass\n", module.__dict__)  # pylint: disable=exec-used
    gone_cls = module.Gone
    gone_cls.__module__ = module.__name__
    sys.modules[module.__name__] = module
    try:
        blobs, warnings = store.pack_storage({"gone": gone_cls(), "ok": 1})
    finally:
        del sys.modules[module.__name__]
    assert warnings == []
    blobs["garbage"] = b"not a pickle"
    restored, warnings = store.unpack_storage(blobs)
    assert restored == {"ok": 1}
    assert sorted(w.split(" could not be restored")[0] for w in warnings) == ["storage key 'garbage'", "storage key 'gone'"]


# ---- the run directory -------------------------------------------------------------------------

def test_save_and_load_host_state(tmp_path):
    store.save_host_state(tmp_path, "web-1", {"host": "web-1", "calls": [1]})
    path = store.host_state_path(tmp_path, "web-1")
    assert path == tmp_path / "hosts" / "web-1.pickle"
    state = store.load_host_state(tmp_path, "web-1")
    assert state["calls"] == [1] and state["version"] == store.STATE_VERSION and state["saved"] <= time.time()
    assert [p.name for p in path.parent.iterdir()] == ["web-1.pickle"], "no temporary file is left"
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_state_others_could_have_written_is_not_read(tmp_path):
    store.save_host_state(tmp_path, "h", {"host": "h"})
    assert store.load_host_state(tmp_path, "h") is not None
    hosts = store.host_state_path(tmp_path, "h").parent
    hosts.chmod(0o777)
    try:
        assert store.load_host_state(tmp_path, "h") is None
    finally:
        hosts.chmod(0o700)


def test_unusable_state_files_read_as_no_state(tmp_path):
    assert store.load_host_state(tmp_path, "missing") is None
    path = store.host_state_path(tmp_path, "h")
    path.parent.mkdir(parents=True)
    for content in (b"garbage", pickle.dumps(["not", "a", "dict"]), pickle.dumps({"version": 999}), b""):
        path.write_bytes(content)
        assert store.load_host_state(tmp_path, "h") is None


def test_host_names_are_made_safe_for_file_names(tmp_path):
    assert store.host_state_path(tmp_path, "../etc/passwd").parent == tmp_path / "hosts"
    assert store.host_state_path(tmp_path, "a b/c").name == "a_b_c.pickle"
    assert store.host_state_path(tmp_path, "").name == "_.pickle"


def test_all_host_states_keys_by_host(tmp_path):
    assert store.all_host_states(tmp_path) == {}
    store.save_host_state(tmp_path, "a/b", {"host": "a/b"})
    store.save_host_state(tmp_path, "c", {"host": "c"})
    assert sorted(store.all_host_states(tmp_path)) == ["a/b", "c"]


def test_run_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EXLIAR_VFIO_RUN_DIR", str(tmp_path / "override"))
    assert store.run_dir() == tmp_path / "override"
    monkeypatch.delenv("EXLIAR_VFIO_RUN_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pid = os.getpid()
    rdir = store.run_dir(pid)
    assert rdir.parent == tmp_path / "cache" / "exliar-vfio" / "runs"
    start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert rdir.name == f"{pid}-{start}"
    assert store.run_dir().name.startswith(f"{os.getppid()}-")


def test_prune_runs_keeps_the_newest(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = tmp_path / "exliar-vfio" / "runs"
    for i in range(5):
        (runs / f"run{i}").mkdir(parents=True)
        os.utime(runs / f"run{i}", (1000 + i, 1000 + i))
    store.prune_runs(keep=2)
    assert sorted(p.name for p in runs.iterdir()) == ["run3", "run4"]


# ---- a host's session across tasks ----------------------------------------------------------------

KEEPER = '''
import threading

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class Keeper(api.VfioPlugin):
    def on_load(self, ctx):
        ctx.set("lock", threading.Lock())
        ctx.set("loads", ctx.get("loads", int, 0) + 1)
        ctx.set("stages", [])

    def on_system_detected(self, ctx, system):
        ctx.get_mut("stages", list).append(("system", ctx.get("lock") is not None))

    def on_cleanup(self, ctx):
        ctx.get_mut("stages", list).append(("cleanup", ctx.get("lock") is not None))

    def on_unload(self, ctx):
        ctx.get_mut("stages", list).append(("unload", None))


def create_plugin():
    return Keeper()
'''


@pytest.fixture
def keeper_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pdir = tmp_path / "plugins" / "keeper"
    pdir.mkdir(parents=True)
    (pdir / "plugin.toml").write_text('name = "keeper"\nversion = "1.0.0"\ndescription = "keeps state"\n'
                                      'author = "tests"\napi_version = "1.0"\n')
    (pdir / "plugin.py").write_text(KEEPER)
    meta = load_manifest(pdir)
    approvals = Approvals.load(tmp_path / "approvals.json")
    approvals.approve(meta, plugin_digest(hash_manifest(pdir)), meta.permissions)
    return {"vfio_plugin_dirs": [str(pdir.parent)], "vfio_plugin_approvals_file": str(approvals.path),
            "vfio_plugin_default_dirs": False}


def test_a_session_keeps_storage_between_tasks_and_drops_an_unpicklable_value_with_a_warning(keeper_vars, tmp_path):
    rdir = tmp_path / "run"
    first = open_session(keeper_vars, "h1", rdir)
    first.detection({})
    first.save()  # must not raise on the lock
    saved = store.load_host_state(rdir, "h1")
    assert any(w.startswith("keeper: storage key 'lock' (lock) cannot be kept after this stage") for w in saved["warnings"])
    assert sorted(saved["storage"]["keeper"]) == ["loads", "stages"]

    second = open_session(keeper_vars, "h1", rdir)  # the next task: state restored, on_load not run again
    ctx = second.manager.contexts["keeper"]
    assert ctx.get("loads") == 1 and ctx.get("lock") is None
    assert ctx.get("stages") == [("system", True)]
    second.detection({})
    second.save()
    assert [c["hook"] for c in store.load_host_state(rdir, "h1")["calls"]] == ["on_load", "on_system_detected",
                                                                               "on_system_detected"]


def test_finish_run_ends_the_lifecycle_once(keeper_vars, tmp_path):
    rdir = tmp_path / "run"
    session = open_session(keeper_vars, "h1", rdir)
    session.detection({})
    session.save()
    out = finish_run(rdir)
    assert list(out) == ["h1"]
    finish_run(rdir)  # a second call must not end it again
    state = store.load_host_state(rdir, "h1")
    assert state["finished"] is True
    assert pickle.loads(state["storage"]["keeper"]["stages"]) == [("system", True), ("cleanup", False), ("unload", None)]
    assert [c["hook"] for c in state["calls"]] == ["on_load", "on_system_detected", "on_cleanup", "on_unload"]


def test_without_plugins_there_is_no_session(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert open_session({"vfio_plugin_default_dirs": False}, "h1", tmp_path / "run") is None
    assert open_session({"vfio_plugins_enabled": False, "vfio_plugin_dirs": [str(tmp_path)]}, "h1", tmp_path) is None
    result = run_stage_hooks({"changed": False}, {"vfio_plugin_default_dirs": False, "inventory_hostname": "h1"},
                             "detection", {})
    assert result == {"changed": False}
    assert not (tmp_path / "run").exists()


def test_the_unpicklable_value_warning_reaches_the_task_result(keeper_vars, tmp_path, monkeypatch):
    monkeypatch.setenv("EXLIAR_VFIO_RUN_DIR", str(tmp_path / "run"))
    result = run_stage_hooks({}, dict(keeper_vars, inventory_hostname="h1"), "detection", {})
    assert result["vfio_plugins"]["loaded"] == ["keeper"]
    shown = result["vfio_plugins"]["warnings"] + result.get("warnings", [])
    assert any("storage key 'lock'" in w for w in shown), shown
