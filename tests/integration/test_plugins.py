"""Extension plugins in a real run: the lab playbook with the test plugins of tests/integration/plugins.

The plugins are copied into a private directory, approved in a private approvals file and run by
``playbooks/vfio.yml`` on a few lab hosts, with ``XDG_CACHE_HOME`` and ``XDG_CONFIG_HOME`` in the
test's directory (the user's own files are never read or written). The ``recorder`` plugin writes
one JSON line per hook call (host, hook, detail, the token ``on_load`` stored, the process id), so
the tests read the exact call order per host.

What a host's plugins go through in this playbook (its only stage with hooks is detection, in the
``vfio_facts`` task, run by an Ansible worker process; the summary callback runs in the
``ansible-playbook`` process itself):

* the detection task: ``on_load``, ``register_commands``, ``register_ui_elements`` (the order of
  ``api.LIFECYCLE``), ``on_system_detected``, ``on_device_enumeration``, then ``on_gpu_detected``
  once per GPU in the order of the host's facts;
* the summary callback: ``on_cleanup``; the panels of the report need ``register_commands`` and
  ``register_ui_elements`` again (the registries of the worker process are gone) and the panel is
  rendered; ``on_unload`` ends the lifecycle: nothing is called on a plugin after it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from labrun import REPO, VENV_BIN, ansible_env, cached_facts, recap
from plugin_install import install_plugins


HOSTS = ("single-gpu-desktop", "dual-identical-gt710-fedora", "server-bmc-vga")  # 1, 2 and 4 GPUs
TOKEN = "set-in-on_load"
LOADED = ["crasher", "emitter", "recorder", "sleeper"]
APPROVE_HINT = "ansible-playbook playbooks/plugins.yml -e vfio_plugin_action=approve -e vfio_plugin_name=unapproved"
RESULT_LINE = re.compile(r"^(ok|changed|fatal): \[([^\]]+)\](?:: FAILED!)? => (\{.*\})\s*$")


# ---- helpers ------------------------------------------------------------------------------

def run_lab(base: Path, hosts, extra_vars: dict) -> subprocess.CompletedProcess:
    """``ansible-playbook playbooks/vfio.yml -v`` on ``hosts``, with caches and config below ``base``."""
    env = ansible_env(base, XDG_CACHE_HOME=str(base / "cache"), XDG_CONFIG_HOME=str(base / "config"))
    for var in ("EXLIAR_VFIO_RUN_DIR", "EXLIAR_VFIO_REPORT_DIR"):
        env.pop(var, None)
    extra_vars = {"vfio_devices": [], **extra_vars}  # detection only, unless the test selects devices
    cmd = [str(VENV_BIN / "ansible-playbook"), "playbooks/vfio.yml", "-v", "--limit", ",".join(hosts),
           "-e", json.dumps(extra_vars)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)


def task_results(stdout: str) -> dict:
    """host -> result of the detection task (the one returning ``ansible_facts.vfio``), from ``-v`` output;
    ``_status`` is ok, changed or fatal (Ansible shows a failed result without its ``failed`` key)."""
    out = {}
    for line in stdout.splitlines():
        match = RESULT_LINE.match(line)
        if not match:
            continue
        result = json.loads(match.group(3))
        if "vfio" in (result.get("ansible_facts") or {}) or "vfio_plugins" in result or match.group(1) == "fatal":
            out[match.group(2)] = dict(result, _status=match.group(1))
    return out


def summary_sections(stdout: str) -> dict:
    """host -> its block of the VFIO SUMMARY."""
    text = stdout[stdout.index("VFIO SUMMARY"):].split("\n", 1)[1]
    out = {}
    for block in text.strip("\n").split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines:
            out[lines[0].strip()] = "\n".join(lines)
    return out


def one_line(text: str) -> str:
    return " ".join(text.split())


def host_state(run: dict, host: str) -> dict:
    with open(run["rdir"] / "hosts" / f"{host}.pickle", "rb") as handle:
        return pickle.load(handle)


# ---- the main run: recorder, emitter, crasher, sleeper, needs-missing and an unapproved plugin -----

@pytest.fixture(scope="module")
def plugin_run(sysroots, tmp_path_factory):  # pylint: disable=unused-argument
    base = tmp_path_factory.mktemp("plugins-run")
    base.chmod(0o700)
    names = ["recorder", "emitter", "crasher", "sleeper", "needs-missing", "unapproved"]
    pdir, approvals = install_plugins(base, names, approve=[n for n in names if n != "unapproved"])
    log = base / "recorder.jsonl"
    proc = run_lab(base, HOSTS, {
        "vfio_plugin_dirs": [str(pdir)], "vfio_plugin_approvals_file": str(approvals),
        "vfio_plugins": {"recorder": {"config": {"log": str(log)}}}, "vfio_plugin_default_dirs": False,
    })
    runs = sorted((base / "cache" / "exliar-vfio" / "runs").iterdir())
    assert len(runs) == 1, runs
    rdir = runs[0]
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {
        "proc": proc, "base": base, "rdir": rdir, "main_pid": int(rdir.name.split("-")[0]),
        "recap": recap(proc.stdout), "entries": entries, "results": task_results(proc.stdout),
        "facts": {h: cached_facts(base, h)["vfio"] for h in HOSTS},
        "output": one_line(proc.stdout + "\n" + proc.stderr),
    }


def entries_of(run: dict, host: str, worker: bool | None = None, events: bool = False) -> list:
    """The recorder's lines for ``host``: worker=True the detection task's, False the callback's."""
    out = []
    for e in run["entries"]:
        if e["host"] != host or (e["hook"] == "event") != events:
            continue
        if worker is not None and (e["pid"] != run["main_pid"]) != worker:
            continue
        out.append(e)
    return out


def gpus_of(run: dict, host: str) -> list:
    return [g["address"] for g in run["facts"][host]["gpus"]]


def test_run_stays_green_and_changes_nothing(plugin_run):
    proc = plugin_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(plugin_run["recap"]) == sorted(HOSTS)
    for host, counts in plugin_run["recap"].items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, host
        assert counts["changed"] == 0, host


def test_lab_hosts_have_the_gpus_the_tests_rely_on(plugin_run):
    assert {h: len(gpus_of(plugin_run, h)) for h in HOSTS} == {HOSTS[0]: 1, HOSTS[1]: 2, HOSTS[2]: 4}


def test_task_result_summarises_the_plugins(plugin_run):
    for host in HOSTS:
        summary = plugin_run["results"][host]["vfio_plugins"]
        assert summary["loaded"] == LOADED, host
        assert sorted(summary["rejected"]) == ["needs-missing", "unapproved"], host
        assert summary["calls"] > 0


@pytest.mark.parametrize("host", HOSTS)
def test_detection_stage_runs_the_hooks_in_lifecycle_order(plugin_run, host):
    got = [(e["hook"], e["detail"]) for e in entries_of(plugin_run, host, worker=True)]
    distribution = plugin_run["facts"][host]["system"]["distribution"]["id"]
    expected = [("on_load", TOKEN), ("register_commands", None), ("register_ui_elements", None),
                ("on_system_detected", {"distribution": distribution, "service": distribution}),
                ("on_device_enumeration", len(plugin_run["facts"][host]["pci_devices"]))]
    expected += [("on_gpu_detected", addr) for addr in gpus_of(plugin_run, host)]
    assert got == expected
    assert len({e["pid"] for e in entries_of(plugin_run, host, worker=True)}) == 1, "one task, one process"


@pytest.mark.parametrize("host", HOSTS)
def test_lifecycle_ends_with_cleanup_and_nothing_after_unload(plugin_run, host):
    got = [e["hook"] for e in entries_of(plugin_run, host, worker=False)]
    assert got == ["on_cleanup", "register_commands", "register_ui_elements", "panel:calls", "on_unload"]


@pytest.mark.parametrize("host", HOSTS)
def test_lifecycle_end_runs_once_in_the_callback_process(plugin_run, host):
    host_entries = [e for e in plugin_run["entries"] if e["host"] == host]
    end = entries_of(plugin_run, host, worker=False)
    hooks = [e["hook"] for e in end]
    assert hooks.count("on_cleanup") == 1 and hooks.count("on_unload") == 1
    assert hooks.index("on_cleanup") < hooks.index("on_unload")
    assert "on_load" not in hooks, "the callback restores the plugins' state, it does not load them again"
    assert not {"on_system_detected", "on_device_enumeration", "on_gpu_detected"} & set(hooks)
    assert host_entries[-len(end):] == end, "the end of the lifecycle comes after the detection stage"
    assert [e["hook"] for e in host_entries].count("on_load") == 1


@pytest.mark.parametrize("host", HOSTS)
def test_state_set_in_on_load_is_seen_by_later_hooks_in_other_processes(plugin_run, host):
    worker = entries_of(plugin_run, host, worker=True)
    end = entries_of(plugin_run, host, worker=False)
    assert worker and end
    assert {e["pid"] for e in worker}.isdisjoint({e["pid"] for e in end})
    assert all(e["token"] == TOKEN for e in worker + end + entries_of(plugin_run, host, events=True))
    # the storage list the hooks appended to is the run's, across both processes
    stored = pickle.loads(host_state(plugin_run, host)["storage"]["recorder"]["calls"])
    file_order = [(e["hook"], e["detail"]) for e in plugin_run["entries"]
                  if e["host"] == host and not e["hook"].startswith("panel:")]
    assert [list(c) if isinstance(c, tuple) else c for c in stored] == [list(c) for c in file_order]
    assert pickle.loads(host_state(plugin_run, host)["storage"]["recorder"]["token"]) == TOKEN


@pytest.mark.parametrize("host", HOSTS)
def test_the_emitters_event_reaches_the_recorder(plugin_run, host):
    events = entries_of(plugin_run, host, events=True)
    assert [e["detail"] for e in events] == [
        {"event_type": "gpu_seen", "address": addr, "source": "emitter"} for addr in gpus_of(plugin_run, host)]
    calls = host_state(plugin_run, host)["calls"]
    delivered = [c for c in calls if c["plugin"] == "recorder" and c["hook"].startswith("event:")]
    assert [c["hook"] for c in delivered] == ["event:GpuSeen"] * len(gpus_of(plugin_run, host))
    assert all(c["ok"] for c in delivered)
    assert ("recorder", "ansible_collections.exliar.vfio.plugins.plugin_utils.api:Event", "handle_event") in \
        host_state(plugin_run, host)["subscriptions"]


@pytest.mark.parametrize("host", HOSTS)
def test_crasher_and_sleeper_are_reported_per_host(plugin_run, host):
    out = plugin_run["output"]
    system_error = "RuntimeError: crasher boom in on_system_detected"
    expected = [("crasher", "on_system_detected", system_error, "error"),
                ("sleeper", "on_device_enumeration", "did not return within 1 s", "timeout")]
    expected += [("crasher", "on_gpu_detected", f"ValueError: crasher boom in on_gpu_detected for {a}", "error")
                 for a in gpus_of(plugin_run, host)]
    section = one_line(summary_sections(plugin_run["proc"].stdout)[host])
    failures = plugin_run["results"][host]["vfio_plugins"]["failures"]
    for plugin, hook, error, kind in expected:
        assert f"plugin {plugin} failed in {hook} on {host}: {error}" in out, (plugin, hook)  # task warning
        assert f"! plugin {plugin} failed in {hook}: {error}" in section, (plugin, hook)     # VFIO SUMMARY
        assert {"host": host, "plugin": plugin, "hook": hook, "error": error, "kind": kind,
                "critical": False} in failures
    assert len(failures) == len(expected)
    # the stage did not wait for the sleeper's 3 s: its timeout is 1 s
    sleeper = [c for c in host_state(plugin_run, host)["calls"] if c["plugin"] == "sleeper"]
    assert len(sleeper) == 1 and not sleeper[0]["ok"] and 900 <= sleeper[0]["ms"] < 2500


def test_plugin_with_a_missing_dependency_is_not_loaded(plugin_run):
    reason = "needs absent-helper >=1.0 which is not installed"
    assert f"plugin needs-missing not loaded: {reason}" in plugin_run["output"]
    sections = summary_sections(plugin_run["proc"].stdout)
    for host in HOSTS:
        assert plugin_run["results"][host]["vfio_plugins"]["rejected"]["needs-missing"] == reason
        assert f"! plugin needs-missing not loaded: {reason}" in one_line(sections[host])
        assert not any(c["plugin"] == "needs-missing" for c in host_state(plugin_run, host)["calls"])


def test_unapproved_plugin_is_not_loaded_and_the_message_says_how_to_approve(plugin_run):
    sections = summary_sections(plugin_run["proc"].stdout)
    for host in HOSTS:
        reason = plugin_run["results"][host]["vfio_plugins"]["rejected"]["unapproved"]
        assert "unapproved 1.0.0 is not approved" in reason and reason.endswith(f"approve it with: {APPROVE_HINT}")
        assert f"! plugin unapproved not loaded: {reason}" in one_line(sections[host])
        assert "unapproved" not in host_state(plugin_run, host)["plugins"]
    assert "plugin unapproved not loaded: plugin unapproved 1.0.0 is not approved" in plugin_run["output"]


def test_html_report_has_every_host_and_the_recorders_panel(plugin_run):
    reports = sorted((plugin_run["base"] / "cache" / "exliar-vfio" / "reports").glob("*.html"))
    assert len(reports) == 1
    assert f"run report: {reports[0]}" in plugin_run["proc"].stdout
    page = reports[0].read_text()
    for host in HOSTS:
        assert f"<h2 id='{host}'>{host} <span class=\"ok\">ok</span></h2>" in page
        assert f"<tr><th>recorder host</th><td>{host}</td></tr><tr><th>recorder token</th><td>{TOKEN}</td></tr>" in page
    assert page.count("<h3>Recorder panel</h3>") == len(HOSTS)
    assert "crasher failed in on_system_detected" in page and "needs-missing not loaded" in page


def test_saved_state_lists_the_recorders_panel_and_command(plugin_run):
    for host in HOSTS:
        state = host_state(plugin_run, host)
        assert state["finished"] is True
        assert state["commands"] == {"recorder-dump": {"description": "Print the recorded hook calls", "plugin": "recorder"}}
        assert state["panels"] == {"recorder:calls": {"title": "Recorder panel", "plugin": "recorder"}}


# ---- a critical plugin fails its host only --------------------------------------------------

def test_critical_plugin_that_raises_fails_its_host_only(sysroots, tmp_path):  # pylint: disable=unused-argument
    tmp_path.chmod(0o700)
    pdir, approvals = install_plugins(tmp_path, ["critical-crasher"], approve=["critical-crasher"])
    bad, good = HOSTS[0], HOSTS[1]
    proc = run_lab(tmp_path, (bad, good), {
        "vfio_plugin_dirs": [str(pdir)], "vfio_plugin_approvals_file": str(approvals), "vfio_plugin_default_dirs": False,
        "vfio_plugins": {"critical-crasher": {"config": {"fail_on": bad}}},
    })
    counts = recap(proc.stdout)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert counts[bad]["failed"] == 1
    assert counts[good]["failed"] == 0 and counts[good]["unreachable"] == 0 and counts[good]["ok"] >= 2
    message = f"critical plugin critical-crasher failed in on_system_detected: RuntimeError: critical boom on {bad}"
    results = task_results(proc.stdout)
    assert results[bad]["_status"] == "fatal" and results[bad]["msg"] == message
    assert results[bad]["vfio_plugins"]["failures"] == [{
        "host": bad, "plugin": "critical-crasher", "hook": "on_system_detected", "kind": "error", "critical": True,
        "error": f"RuntimeError: critical boom on {bad}"}]
    assert results[good]["_status"] == "ok" and results[good]["vfio_plugins"]["failures"] == []
    sections = summary_sections(proc.stdout)
    assert "FAILED" in sections[bad] and message in one_line(sections[bad])
    assert "FAILED" not in sections[good]
    assert [g["address"] for g in cached_facts(tmp_path, good)["vfio"]["gpus"]]


# ---- no plugin installed: no overhead -------------------------------------------------------

def test_without_plugins_the_task_result_has_no_plugin_key(sysroots, tmp_path):  # pylint: disable=unused-argument
    proc = run_lab(tmp_path, HOSTS[:1], {"vfio_plugin_default_dirs": False})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = task_results(proc.stdout)[HOSTS[0]]
    assert "vfio" in result["ansible_facts"]
    assert "vfio_plugins" not in result
    assert not (tmp_path / "cache" / "exliar-vfio" / "runs").exists(), "no plugin state is written"
    assert "plugins " not in summary_sections(proc.stdout)[HOSTS[0]]
    assert os.listdir(tmp_path / "cache" / "exliar-vfio" / "reports")


# ---- target access: only a plugin that asks for it touches the host -------------------------------

def test_a_plugin_reads_the_host_through_the_stage_connection(sysroots, tmp_path, lab_facts):  # pylint: disable=unused-argument
    pdir, approvals = install_plugins(tmp_path, ["target-reader"], approve=["target-reader"])
    hosts = ["desktop-intel-turing", "gpu-nvme-shared-group"]
    proc = run_lab(tmp_path, hosts, {"vfio_plugin_dirs": [str(pdir)], "vfio_plugin_approvals_file": str(approvals),
                                     "vfio_plugin_default_dirs": False})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rdir = next((tmp_path / "cache" / "exliar-vfio" / "runs").iterdir())
    for host in hosts:
        with open(rdir / "hosts" / f"{host}.pickle", "rb") as handle:
            state = pickle.load(handle)
        storage = {k: pickle.loads(v) for k, v in state["storage"]["target-reader"].items()}
        # the file below the host's vfio_root, read over the connection, names the host's distribution
        assert storage["os_id"] == lab_facts[host]["system"]["distribution"]["id"]
        assert storage["exec"].startswith("denied:") and "target:exec" in storage["exec"]


def test_binding_hooks_run_per_device_and_plugin_records_reach_the_journal(sysroots, tmp_path):
    """The binding stage runs on_pre/on_post_vfio_bind once per planned function (the GPU and its
    audio), and what a plugin recorded before the module ran is in the host's change journal."""
    host = "dual-identical-gt710-fedora"
    root = tmp_path / "root"
    shutil.copytree(sysroots[host], root, symlinks=True)
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    pdir, approvals = install_plugins(base, ["recorder"], approve=["recorder"])
    log = base / "recorder.jsonl"
    extra = {"vfio_plugin_dirs": [str(pdir)], "vfio_plugin_approvals_file": str(approvals), "vfio_plugin_default_dirs": False,
             "vfio_plugins": {"recorder": {"config": {"log": str(log)}}}, "vfio_root": str(root),
             "vfio_devices": ["0000:0a:00.0"], "vfio_take_over_vfio_config": True}
    first = run_lab(base, [host], extra)
    assert recap(first.stdout)[host]["changed"] == 3, first.stdout[-3000:]  # binding, initramfs and bootloader configuration
    second = run_lab(base, [host], extra)
    assert recap(second.stdout)[host] == dict(recap(second.stdout)[host], changed=0, failed=0)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    bind_calls = [(e["hook"], e["detail"]) for e in entries if "vfio_bind" in e["hook"]]
    once = [("on_pre_vfio_bind", "0000:0a:00.0"), ("on_pre_vfio_bind", "0000:0a:00.1"),
            ("on_post_vfio_bind", "0000:0a:00.0"), ("on_post_vfio_bind", "0000:0a:00.1")]
    assert bind_calls == once + once, "every run, also the converged one"
    initramfs_calls = [e["hook"] for e in entries if "initramfs" in e["hook"]]
    assert initramfs_calls == ["on_pre_initramfs_update", "on_post_initramfs_update"], \
        "around the rebuild handler, which only the first run (configuration changed) notifies"
    journal = [json.loads(line) for line in (root / "var/lib/exliar-vfio/journal.jsonl").read_text().splitlines()]
    plugin_ops = [j for j in journal if j["kind"] == "plugin"]
    assert [(j["plugin"], j["operation"], j["details"]["address"]) for j in plugin_ops][:2] == [
        ("recorder", "recorder-pre-bind", "0000:0a:00.0"), ("recorder", "recorder-pre-bind", "0000:0a:00.1")]
    assert all(j["stage"] == "bind" for j in plugin_ops)
