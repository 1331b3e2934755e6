"""The VM stage in a real run: playbooks/vfio.yml over copies of lab sysroots with ``vfio_vms``.

Below a root other than ``/`` the stage only previews, in check mode: the runs here use
``--check --diff`` and check the domain XML, the diff and the summary, with the plugins'
``on_pre_vm_start`` changes in it. Hosts:

* ``nvidia`` (Fedora 34, RTX 2070 + its audio, USB and UCSI functions): the built-in
  ``nvidia-handler`` and the test plugin ``vm-crasher`` (changes the config, then raises);
* ``amd`` (Debian 12, RX 580): ``nvidia-handler`` and ``amd-reset``;
* ``crash`` (the Fedora machine again): ``vm-crasher`` alone;
* ``plain`` (the Fedora machine again): no plugin;
* ``badref``: a VM naming a device the binding stage did not select.

A real libvirtd defines and runs domains in tests/libvirt; here no libvirt is asked.
"""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from build_sysroot import build, profile_paths
from labrun import VENV_BIN, cached_facts
from plugin_install import install_plugins
from sysroot_trees import Run, copy_root, differences, private_work_dir, tree

PROFILES = {p.stem: p for p in profile_paths()}
FEDORA = "desktop-intel-turing"
DEBIAN = "apu-raven-rx580-debian"
HOSTS = {"nvidia": FEDORA, "amd": DEBIAN, "crash": FEDORA, "plain": FEDORA, "badref": FEDORA}
TASK = "exliar.vfio.vm : Define the declared VMs in libvirt with their passed-through devices (and run them on request)"
RTX = ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]
VM = {"name": "win11", "memory_mib": 8192, "vcpus": 4, "devices": ["0000:01:00.0"]}
PLUGINS = {"nvidia": (["nvidia-handler"], ["vm-crasher"]), "amd": (["nvidia-handler", "amd-reset"], []),
           "crash": ([], ["vm-crasher"]), "plain": ([], []), "badref": ([], [])}


def host_vars(host: str, root: Path, pdir: Path) -> dict:
    builtin, tests = PLUGINS[host]
    vm = dict(VM, devices="all") if host == "amd" else dict(VM, devices=["0000:09:00.0"]) if host == "badref" else VM
    out = {"vfio_root": str(root), "vfio_vms": [vm], "vfio_builtin_plugins": builtin}
    if tests:
        out["vfio_plugin_dirs"] = [str(pdir)]
    return out


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    yield from private_work_dir(tmp_path_factory, "vm-stage")


@pytest.fixture(scope="module")
def vm_run(work_dir):
    started = time.monotonic()
    work = work_dir
    work.chmod(0o700)
    bases = {pid: build(PROFILES[pid], work / "base") for pid in sorted(set(HOSTS.values()))}
    roots = {h: copy_root(bases[pid], work / "roots" / h) for h, pid in HOSTS.items()}
    before = {h: tree(r) for h, r in roots.items()}
    pdir, approvals = install_plugins(work, ["vm-crasher"])
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
                            "vfio_take_over_vfio_config": True, "vfio_devices": [{"gpus": "discrete_except_boot"}],
                            "vfio_plugin_approvals_file": str(approvals), "vfio_plugin_default_dirs": False,
                            "vfio_bootloader_stage": False},
                   "hosts": {h: host_vars(h, roots[h], pdir) for h in HOSTS}}}
    (work / "inventory.yml").write_text(yaml.safe_dump(inv, sort_keys=True))
    run = Run(work, "apply", "playbooks/vfio.yml", "-v", "--check", "--diff", inventory=work / "inventory.yml").wait()
    again = Run(work, "again", "playbooks/vfio.yml", "-v", "--check", "--diff", "--limit", "nvidia", inventory=work / "inventory.yml").wait()
    return {"run": run, "again": again, "roots": roots, "before": before, "seconds": time.monotonic() - started}


def vm_result(vm_run, host: str, run: str = "run") -> dict:
    got = vm_run[run].result(TASK, host)
    assert got is not None, f"the VM task did not run on {host}:\n{vm_run[run].tail()}"
    return got[1]


def domain_of(vm_run, host: str) -> ET.Element:
    (vm,) = vm_result(vm_run, host)["vms"]
    return ET.fromstring(vm["xml"])


def hostdev_addresses(dom: ET.Element) -> list:
    out = []
    for hd in dom.iter("hostdev"):
        a = hd.find("source/address")
        out.append(f"{int(a.get('domain'), 16):04x}:{int(a.get('bus'), 16):02x}:{int(a.get('slot'), 16):02x}.{int(a.get('function'), 16)}")
    return out


def test_the_run_is_green_except_the_bad_reference(vm_run):
    run = vm_run["run"]
    assert set(run.recap) == set(HOSTS), run.tail()
    for host in HOSTS:
        failed = 1 if host == "badref" else 0
        assert run.recap[host]["failed"] == failed, (host, run.recap[host], run.tail())
    print(f"\nVM stage: {len(HOSTS)} hosts in {vm_run['seconds']:.1f}s (playbook {run.seconds:.1f}s)")


def test_the_gpu_brings_its_companions_in_one_guest_slot(vm_run):
    dom = domain_of(vm_run, "plain")
    assert sorted(hostdev_addresses(dom)) == RTX
    guest = [hd.find("address") for hd in dom.iter("hostdev")]
    assert len({(a.get("bus"), a.get("slot")) for a in guest}) == 1, [a.attrib for a in guest]
    functions = {int(a.get("function"), 16): a.get("multifunction") for a in guest}
    assert sorted(functions) == [0, 1, 2, 3] and functions[0] == "on", functions
    for hd in dom.iter("hostdev"):
        assert hd.get("managed") == "no" and hd.get("type") == "pci"
    assert dom.findtext("memory") is not None and dom.findtext("vcpu") == "4"


def test_the_nvidia_handler_sets_the_code_43_workarounds_for_the_nvidia_gpu(vm_run):
    dom = domain_of(vm_run, "nvidia")
    assert dom.find("features/hyperv/vendor_id").get("value") == "exliarvfio01"
    assert dom.find("features/kvm/hidden").get("state") == "on"
    assert [f.get("name") for f in dom.findall("cpu/feature") if f.get("policy") == "disable"] == ["hypervisor"]
    (vm,) = vm_result(vm_run, "nvidia")["vms"]
    (summary,) = cached_facts(vm_run["run"].tmp, "nvidia")["vfio_vm_results"]
    assert summary["plugin_features"] == ["hypervisor_hidden", "kvm_hidden", "vendor_id"]
    assert summary["preview"] is True and vm["defined"] is True


def test_the_features_show_in_the_diff_and_the_summary(vm_run):
    out = vm_run["run"].stdout
    assert re.search(r"^\+\s*<vendor_id state=.on. value=.exliarvfio01.\s*/>", out, re.M), out[-6000:]
    assert "win11: would be defined" in out
    assert "from plugins: hypervisor_hidden, kvm_hidden, vendor_id" in out


@pytest.mark.parametrize("host", ["amd", "crash", "plain"])
def test_no_code_43_settings_without_an_nvidia_gpu_or_the_handler(vm_run, host):
    dom = domain_of(vm_run, host)
    assert dom.find("features/hyperv") is None and dom.find("features/kvm") is None
    assert not [f for f in dom.findall("cpu/feature") if f.get("name") == "hypervisor"]


def test_a_crashing_plugin_leaves_the_config_as_it_was(vm_run):
    crash, plain = vm_result(vm_run, "crash"), vm_result(vm_run, "plain")
    (vm_crash,), (vm_plain,) = crash["vms"], plain["vms"]
    assert vm_crash["xml"] == vm_plain["xml"]
    failures = crash["vfio_plugins"]["failures"]
    assert [(f["plugin"], f["hook"], f["error"]) for f in failures] == [
        ("vm-crasher", "on_pre_vm_start", "RuntimeError: vm-crasher boom in win11")]
    # next to a plugin that returned cleanly, only the clean plugin's change is kept
    (vm_nvidia,) = vm_result(vm_run, "nvidia")["vms"]
    assert "crasher" not in vm_nvidia["xml"] and sorted(hostdev_addresses(ET.fromstring(vm_nvidia["xml"]))) == RTX


def test_the_amd_reset_plugin_flags_the_polaris_card(vm_run):
    """on_gpu_detected (the detection task) flags the RX 580 (Polaris 10, 1002:67df) and says what to do."""
    run = vm_run["run"]
    warnings = [w for (task, host), (_status, res) in run.results.items() if host == "amd"
                for w in (res.get("vfio_plugins") or {}).get("warnings") or [] if w.startswith("plugin amd-reset: ")]
    assert len(warnings) == 1, warnings
    assert "AMD Polaris 10 GPU" in warnings[0] and "at 0000:10:00.0 has the AMD reset bug" in warnings[0], warnings
    assert "install vendor-reset" in warnings[0], warnings
    assert "[WARNING]: plugin amd-reset: AMD Polaris 10 GPU" in run.stdout + run.stderr
    assert cached_facts(run.tmp, "amd")["vfio_vm_results"][0]["devices"]


def test_a_device_the_binding_stage_did_not_select_is_refused(vm_run):
    status, res = vm_run["run"].result(TASK, "badref")
    assert status == "fatal" and res["changed"] is False
    assert "0000:09:00.0 is not among the devices the binding stage selected" in res["msg"]
    assert "add it to vfio_devices" in res["msg"] and res["msg"].endswith("nothing was changed")


def test_the_preview_writes_nothing_for_the_vms(vm_run):
    for host, root in vm_run["roots"].items():
        assert not (root / "var/lib/exliar-vfio/state/vm").exists(), host
        changed = [p for p in differences(vm_run["before"][host], tree(root)) if "libvirt" in p or "/vm/" in p]
        assert changed == [], (host, changed)


def test_a_second_run_renders_the_same_domain(vm_run):
    first, second = vm_result(vm_run, "nvidia"), vm_result(vm_run, "nvidia", "again")
    assert second["vms"][0]["xml"] == first["vms"][0]["xml"]
    assert vm_run["again"].recap["nvidia"]["failed"] == 0
