"""The bootloader stage's plugin hooks in a real run: playbooks/vfio.yml over copies of lab sysroots with the test
plugins ``bootloader-recorder`` and ``bootloader-crasher`` of tests/integration/plugins.

The plugins are copied into a private directory, approved in a private approvals file (as tests/integration/test_plugins.py
does), with ``XDG_CACHE_HOME`` and ``XDG_CONFIG_HOME`` in the test's directory. ``bootloader-recorder`` writes one JSON line
per hook call with the ``BootloaderConfig`` it got, then tampers with its copy in ``on_pre_bootloader_update``;
``bootloader-crasher`` (not critical) raises in both hooks. Hosts:

* ``grub`` (Debian, GRUB) and ``bls`` (Fedora, grubby/BLS): both plugins;
* ``plain`` (Debian, GRUB, the same machine as ``grub``): no plugin (``vfio_plugins_enabled: false``), what the result
  must be when a plugin crashes.
"""
from __future__ import annotations

import json
import time

import pytest
import yaml

from build_sysroot import build, profile_paths
from labrun import VENV_BIN, cached_facts
from plugin_install import install_plugins
from sysroot_trees import Run, copy_root, private_work_dir


PROFILES = {p.stem: p for p in profile_paths()}
DEBIAN = "apu-raven-rx580-debian"
FEDORA = "desktop-intel-turing"
HOSTS = {"grub": DEBIAN, "bls": FEDORA, "plain": DEBIAN}
TASK = "exliar.vfio.bootloader : Put the kernel parameters where the bootloader in use reads them"
PRE, POST = "on_pre_bootloader_update", "on_post_bootloader_update"
DEBIAN_PARAMS = [("iommu", "pt", "present"), ("vfio-pci.ids", "1002:67df", "present")]
FEDORA_PARAMS = [("intel_iommu", "on", "present"), ("iommu", "pt", "present"),
                 ("vfio-pci.ids", "10de:10f9,10de:1ada,10de:1adb,10de:1f02", "present"), ("rd.driver.pre", "vfio_pci", "present")]
NEXT_BOOT = {
    "grub": "root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro quiet iommu=pt vfio-pci.ids=1002:67df",
    "bls": ("root=UUID=3b5b0e8a-9a4c-4d62-9c1e-8b8e5f0c2a71 ro rootflags=subvol=root rhgb quiet intel_iommu=on "
            "rd.driver.pre=vfio-pci kvm.ignore_msrs=1 iommu=pt vfio-pci.ids=10de:10f9,10de:1ada,10de:1adb,10de:1f02"),
}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    yield from private_work_dir(tmp_path_factory, "bootloader-hooks")


@pytest.fixture(scope="module")
def hook_run(work_dir):
    started = time.monotonic()
    work = work_dir
    work.chmod(0o700)
    bases = {pid: build(PROFILES[pid], work / "base") for pid in sorted(set(HOSTS.values()))}
    roots = {h: copy_root(bases[pid], work / "roots" / h) for h, pid in HOSTS.items()}
    pdir, approvals = install_plugins(work, ["bootloader-recorder", "bootloader-crasher"])
    log = work / "hooks.jsonl"
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
                            "vfio_take_over_vfio_config": True, "vfio_devices": [{"gpus": "discrete_except_boot"}],
                            "vfio_plugin_dirs": [str(pdir)], "vfio_plugin_approvals_file": str(approvals),
                            "vfio_plugin_default_dirs": False,
                            "vfio_plugins": {"bootloader-recorder": {"config": {"log": str(log)}}}},
                   "hosts": {h: dict({"vfio_plugins_enabled": False} if h == "plain" else {}, vfio_root=str(roots[h]))
                             for h in HOSTS}}}
    (work / "inventory.yml").write_text(yaml.safe_dump(inv, sort_keys=True))
    run = Run(work, "apply", "playbooks/vfio.yml", "-v", inventory=work / "inventory.yml").wait()
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"run": run, "roots": roots, "calls": calls, "seconds": time.monotonic() - started}


def calls_of(hook_run, host: str) -> list:
    return [c for c in hook_run["calls"] if c["host"] == host]


def triples(params: list) -> list:
    return [(p["name"], p["value"], p["state"]) for p in params]


def test_the_run_is_green(hook_run):
    run = hook_run["run"]
    assert run.returncode == 0, run.tail()
    # binding + bootloader (initramfs-tools on the Debian host already loads the vfio modules); Fedora: + dracut
    for host, changed in {"grub": 2, "bls": 3, "plain": 2}.items():
        assert run.recap[host]["failed"] == 0 and run.recap[host]["changed"] == changed, (host, run.recap[host])
        assert run.result(TASK, host)[0] == "changed"
    print(f"\nbootloader hooks: {len(HOSTS)} hosts in {hook_run['seconds']:.1f}s (playbook {run.seconds:.1f}s)")


@pytest.mark.parametrize("host, name, params", [("grub", "grub", DEBIAN_PARAMS), ("bls", "grubby", FEDORA_PARAMS)])
def test_the_hooks_get_the_bootloader_config(hook_run, host, name, params):
    got = calls_of(hook_run, host)
    assert [c["hook"] for c in got] == [PRE, POST]
    pre, post = got
    evidence = hook_run["run"].facts(host)["bootloader"]["evidence"]
    assert evidence
    # before the update: the bootloader detection found and the entries the stage will apply, each with its reason
    assert pre["name"] == name and triples(pre["kernel_params"]) == params
    assert all(p["reason"] for p in pre["kernel_params"]), pre["kernel_params"]
    assert (pre["config_path"], pre["next_boot_cmdline"], pre["reboot_required"], pre["evidence"]) == (None, None, None, evidence)
    # after: what the module read back; the recorder's tampering with its copy reached nothing
    _status, res = hook_run["run"].result(TASK, host)
    assert post["name"] == name and triples(post["kernel_params"]) == params
    assert post["next_boot_cmdline"] == res["next_boot_cmdline"] == NEXT_BOOT[host]
    assert post["reboot_required"] is res["reboot_required"] is True
    assert res["config_path"] is not None and post["config_path"] == res["config_path"]
    assert triples(res["params"]) == params
    assert "added_by_a_plugin" not in (hook_run["roots"][host] / "etc/default/grub").read_text()
    assert cached_facts(hook_run["run"].tmp, host)["vfio_bootloader_plan"]["bootloader"] == name


@pytest.mark.parametrize("host", ["grub", "bls"])
def test_a_crashing_hook_is_reported_and_changes_nothing_else(hook_run, host):
    run = hook_run["run"]
    status, res = run.result(TASK, host)
    assert status == "changed" and not res.get("failed")
    name = "grub" if host == "grub" else "grubby"
    errors = [(PRE, f"RuntimeError: bootloader-crasher boom before {name}"), (POST, f"ValueError: bootloader-crasher boom after {name}")]
    failures = res["vfio_plugins"]["failures"]
    assert failures == [{"host": host, "plugin": "bootloader-crasher", "hook": hook, "error": error, "kind": "error",
                         "critical": False} for hook, error in errors]
    out = " ".join((run.stdout + run.stderr).split())
    for hook, error in errors:
        assert f"plugin bootloader-crasher failed in {hook} on {host}: {error}" in out


def test_the_result_is_the_one_without_plugins(hook_run):
    run = hook_run["run"]
    _s, with_plugins = run.result(TASK, "grub")
    _s, plain = run.result(TASK, "plain")
    assert "vfio_plugins" not in plain
    for key in ("changed", "bootloader", "params", "commands", "config_path", "next_boot_cmdline", "next_boot_source",
                "reboot_required", "next_boot_predicted"):
        assert with_plugins[key] == plain[key], key
    assert [f["path"] for f in with_plugins["files"]] == [f["path"] for f in plain["files"]]
    for rel in ("etc/default/grub", "var/lib/exliar-vfio/state/bootloader.json"):
        assert (hook_run["roots"]["grub"] / rel).read_bytes() == (hook_run["roots"]["plain"] / rel).read_bytes(), rel
    assert calls_of(hook_run, "plain") == []
