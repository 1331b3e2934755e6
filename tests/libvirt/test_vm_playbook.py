"""The VM stage end to end on a real libvirtd: ``playbooks/vm.yml`` on this machine (detection is
read-only, the binding stage runs in check mode with nothing selected) defines a tiny guest with
the built-in ``performance-monitor`` and ``nvidia-handler`` plugins loaded, starts it, waits until it
powers itself off, and hands the measured ``VmStats`` to ``on_post_vm_shutdown``; the run report
shows the performance panel. A second run with ``start: false`` changes nothing.

The stage keeps its state file and journal in ``/var/lib/exliar-vfio`` of the running system;
the fixture moves an existing one aside and puts it back afterwards.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PREFIX, REPO, TIMINGS, timed

pytestmark = pytest.mark.libvirt

STATE = Path("/var/lib/exliar-vfio")
TASK = "exliar.vfio.vm : Define the declared VMs in libvirt with their passed-through devices (and run them on request)"


@pytest.fixture
def own_state_dir(tmp_path):
    """/var/lib/exliar-vfio for this test only."""
    aside = tmp_path / "exliar-vfio-state-aside"
    if STATE.exists():
        shutil.move(str(STATE), aside)
    yield STATE
    shutil.rmtree(STATE, ignore_errors=True)
    if aside.exists():
        shutil.move(str(aside), STATE)


def play(tmp: Path, inventory: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
               ANSIBLE_NOCOLOR="1", XDG_CONFIG_HOME=str(tmp / "config"), XDG_CACHE_HOME=str(tmp / "cache"),
               EXLIAR_VFIO_REPORT_DIR=str(tmp / f"report-{name}"), ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
               PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    with timed(f"playbooks/vm.yml: {name}"):
        return subprocess.run([str(bindir / "ansible-playbook"), "-i", str(inventory), "-v", "playbooks/vm.yml", *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)


def task_result(out: str) -> dict:
    block = out.split(f"TASK [{TASK}]", 1)[1]
    m = re.search(r"^(ok|changed): \[localhost\] => ", block, re.M)
    assert m, block[:3000]
    return json.JSONDecoder().raw_decode(block[m.end():])[0]


def recap(out: str) -> dict:
    m = re.search(r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def test_vm_yml_runs_the_guest_and_the_hooks_get_its_stats(libvirtd, domains, guest, own_state_dir, tmp_path):
    name = domains("playbook")
    vm = {"name": name, "memory_mib": 128, "vcpus": 1, "firmware": "bios", "domain_type": "qemu",
          "kernel": guest["kernel"], "initrd": guest["initrd"]["poweroff"], "cmdline": guest["cmdline"],
          "start": True, "wait_timeout": 150}
    inv = {"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "vfio_root": "/",
        "vfio_devices": [], "vfio_plugin_default_dirs": False,
        "vfio_builtin_plugins": ["performance-monitor", "nvidia-handler"],
        "vfio_plugins": {"performance-monitor": {"config": {"interval_seconds": 0.5}}},
        "vfio_vms": [vm]}}}}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inv))

    first = play(tmp_path, inventory, "start")
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    assert recap(first.stdout)["changed"] >= 1
    res = task_result(first.stdout)
    (out,) = res["vms"]
    assert out["name"] == name and out["defined"] and out["started"] and out["state"] == "shut off"
    stats = out["stats"]
    assert stats["shutdown"] == "shutdown" and 0 < stats["runtime_seconds"] < 150
    # the performance monitor asked for samples in on_pre_vm_start: the module sampled QEMU every 0.5 s
    (config,) = res["vm_configs"]
    assert config["monitor"] == {"interval_seconds": 0.5}
    assert stats["samples"], stats
    # no NVIDIA GPU in this VM: the handler changed nothing
    assert config["features"] == {} and config["devices"] == []
    assert res["vfio_plugins"]["failures"] == [], res["vfio_plugins"]
    assert sorted(res["vfio_plugins"]["loaded"]) == ["nvidia-handler", "performance-monitor"]
    assert f"vm         {name}: defined, qemu, devices none" in first.stdout
    assert re.search(r"ran \d+\.\d s \(shutdown\), CPU time \d+\.\d s, max memory \d+ MiB", first.stdout), first.stdout[-3000:]
    # on_post_vm_shutdown got the stats: the report's performance panel shows this VM's figures
    reports = list((tmp_path / "report-start").glob("run-*.html"))
    assert len(reports) == 1, first.stdout[-2000:]
    text = html.unescape(reports[0].read_text())
    assert "<h3>Performance</h3>" in text and name in text, text[-4000:]
    panel = re.search(r"Runtime: (\d+)s, Avg GPU Usage: ([^,]+), Avg CPU: (\d+(?:\.\d+)?)%, Max Memory: (\d+)MB, (\d+) samples, "
                      r"ended: shutdown", text)
    assert panel, text[-4000:]
    assert abs(int(panel.group(1)) - stats["runtime_seconds"]) <= 2 and int(panel.group(5)) >= 1
    assert int(panel.group(4)) > 16 and panel.group(2).strip() == "n/a", panel.group(0)
    assert f"VM Performance: Runtime: {panel.group(1)}s" in text    # the plugin's log line, in the report
    TIMINGS["playbook guest: runtime_seconds (stats)"] = stats["runtime_seconds"]
    # the state the stage keeps on the host: the XML it defined, written through the journal
    assert (own_state_dir / "state/vm" / f"{name}.xml").read_text() == out["xml"]
    journal = [json.loads(line) for line in (own_state_dir / "journal.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "vm" and r.get("kind") == "domain" for r in journal), journal

    # the same VM without start: nothing to do
    again = play(tmp_path, inventory, "again", "-e", json.dumps({"vfio_vms": [dict(vm, start=False)]}))
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    assert recap(again.stdout)["changed"] == 0, again.stdout[-3000:]
    (out2,) = task_result(again.stdout)["vms"]
    assert out2["defined"] is False and out2["started"] is False and out2["hash"] == out["hash"]
    assert name.startswith(PREFIX)
