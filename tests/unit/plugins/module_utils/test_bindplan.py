"""The binding plan over facts of real sysroots: companions, group coverage, refusals and their overrides,
input errors, ids versus addresses, the persistent files, the drift guard and the kernel handoff."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess

import pytest

from build_sysroot import PROFILE_DIR, build, load_profile
from helpers import (
    CARD_PCI, DESKTOP_PCI, NVIDIA_AUDIO, NVIDIA_GPU, NVIDIA_UCSI, NVIDIA_USB, NVME, PCI_IDS, ROOT_PORT, by_address,
    dev_file, profile, remove, write,
)
from helpers import build as build_profile

from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import (
    MODPROBE_CONF, OPTION_NAMES, OVERRIDE_SCRIPT, OVERRIDES, PLAN_RECORD, make_plan, render_override_script,
)
from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

GPU_FUNCTIONS = [NVIDIA_GPU, NVIDIA_AUDIO, NVIDIA_USB, NVIDIA_UCSI]
GPU_IDS = ["10de:10f8", "10de:1ad8", "10de:1ad9", "10de:1e87"]
NIC = "0000:00:1f.6"
CONNECTION = "192.168.1.50"
ALL_OPTIONS = {name: True for name in OPTION_NAMES}

# The unit desktop with the host using its NVMe (root filesystem and swap) and its NIC (the connection).
IN_USE = {"mounts": [{"block": "nvme0n1p2", "mountpoint": "/", "fstype": "ext4"},
                     {"block": "nvme0n1p1", "mountpoint": "/boot/efi", "fstype": "vfat"}],
          "swaps": ["nvme0n1p3"],
          "network": {"eno1": [f"{CONNECTION}/24"]}}


def _single_gpu_pci() -> list:
    """The NVIDIA card alone (no iGPU): it shows the boot screen."""
    pci = [copy.deepcopy(d) for d in DESKTOP_PCI if d["address"] in ("0000:00:00.0", ROOT_PORT, NVIDIA_GPU, NVIDIA_AUDIO)]
    by_address(pci)[NVIDIA_GPU]["boot_vga"] = True
    return pci


SCENARIOS = {
    "in-use": dict(sections=IN_USE, connection=CONNECTION),
    "single-gpu": dict(sections={"pci": _single_gpu_pci()}),
    "iommu-off": dict(sections={"iommu": None}),
    "kernels": dict(sections={"os": {"kernels": ["5.15.0-91-generic", "6.1.0-18-amd64", "6.2.0-39-generic", "6.8.0-31-generic"],
                                     "builtin_modules": ["vfio", "vfio_iommu_type1"]}}),
    "builtin-vfio-pci": dict(sections={"os": {"builtin_modules": ["vfio", "vfio_iommu_type1", "vfio_pci"]}}),
    "no-vfio-pci": dict(sections={"os": {"missing_modules": ["vfio_pci"]}}),
    # a driver built into the kernel without a /sys/module entry: its driver directory has no module link
    "builtin-xhci": dict(sections={"os": {"builtin_modules": ["xhci_hcd"]}},
                         post=lambda root: remove(root, "sys/bus/pci/drivers/xhci_hcd/module")),
}
_CACHE: dict = {}


@pytest.fixture(scope="session")
def facts_of(sysroot_base):
    """``facts_of(scenario)`` -> gather_facts() of the unit desktop changed as SCENARIOS says (built once; READ ONLY)."""

    def get(name: str) -> dict:
        if name not in _CACHE:
            spec = SCENARIOS[name]
            root = build_profile(profile(**spec["sections"]), sysroot_base / "bindplan" / name)
            write(root, "usr/share/misc/pci.ids", PCI_IDS)
            if spec.get("post"):
                spec["post"](root)
            _CACHE[name] = gather_facts(str(root), connection_address=spec.get("connection"))
        return _CACHE[name]

    return get


_LAB_CACHE: dict = {}


@pytest.fixture(scope="session")
def lab_facts(sysroot_base):
    """``lab_facts(profile id)`` -> gather_facts() of that lab profile's sysroot (built once; READ ONLY)."""

    def get(pid: str) -> dict:
        if pid not in _LAB_CACHE:
            root = build(PROFILE_DIR / f"{pid}.yml", sysroot_base / "lab-bindplan")
            _LAB_CACHE[pid] = gather_facts(str(root))
        return _LAB_CACHE[pid]

    return get


def label(facts: dict, addr: str) -> str:
    d = by_address(facts["pci_devices"])[addr]
    return " ".join(x for x in (d["vendor_name"], d["device_name"]) if x)


# Lab machines that came with a hand-made vfio-pci configuration: the tests let the plan take it over.
TAKE_OVER = {"take_over_vfio_config": True}


def addresses(plan: dict) -> list:
    return [d["address"] for d in plan["devices"]]


def lines(plan: dict, path: str = MODPROBE_CONF) -> list:
    return plan["files"][path]["content"].splitlines()


def directives(plan: dict) -> list:
    """The modprobe.d lines that are not comments."""
    return [line for line in lines(plan) if line.strip() and not line.startswith("#")]


def assert_ok(plan: dict) -> None:
    assert plan["status"] == "ok", (plan["errors"], plan["refusals"])
    assert plan["errors"] == [] and plan["refusals"] == []


def assert_refused_only_by(plan: dict, code: str) -> dict:
    """The plan is refused by exactly one kind of refusal, with no errors and no files; returns the first."""
    assert plan["status"] == "refused" and plan["errors"] == [], plan["errors"]
    assert plan["refusals"] and {r["code"] for r in plan["refusals"]} == {code}, plan["refusals"]
    assert plan["files"] == {} and plan["kernel_params"] == [] and plan["initramfs"] == {"modules": {}, "files": []}
    for r in plan["refusals"]:
        assert r["override"] == OVERRIDES[code]
        assert r["message"].endswith(f"To do it anyway set {OVERRIDES[code]}: true")
    return plan["refusals"][0]


def assert_errors(plan: dict, *needles: str) -> str:
    assert plan["status"] == "refused" and plan["files"] == {}
    text = " | ".join(plan["errors"])
    for needle in needles:
        assert needle in text, (needle, plan["errors"])
    return text


# ---- expansion: companions and IOMMU groups --------------------------------------------------

def test_a_gpu_brings_every_function_of_its_slot(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0"])
    assert_ok(plan)
    assert addresses(plan) == GPU_FUNCTIONS
    reasons = {d["address"]: d["reason"] for d in plan["devices"]}
    assert reasons[NVIDIA_GPU] == "selected"
    assert all(reasons[a] == f"companion of {NVIDIA_GPU} (same slot)" for a in GPU_FUNCTIONS[1:])


@pytest.mark.parametrize("pid, gpu, audio", [
    ("apu-amd-dgpu-split-audio", "0000:03:00.0", "0000:03:00.1"),
    ("b550-navi21-split-audio", "0000:08:00.0", "0000:08:00.1"),
])
def test_a_companion_in_another_iommu_group_is_included(lab_facts, pid, gpu, audio):
    facts = lab_facts(pid)
    devs = by_address(facts["pci_devices"])
    assert devs[gpu]["iommu_group"] != devs[audio]["iommu_group"]  # the point of these machines
    plan = make_plan(facts, [{"gpus": "discrete_except_boot"}])
    assert_ok(plan)
    assert addresses(plan) == [gpu, audio]
    entry = by_address(plan["devices"])[audio]
    assert entry["reason"] == f"companion of {gpu} (same slot)" and entry["iommu_group"] == devs[audio]["iommu_group"]
    ids = sorted(f"{devs[a]['vendor_id']}:{devs[a]['device_id']}" for a in (gpu, audio))
    assert f"options vfio-pci ids={','.join(ids)}" in directives(plan)


def test_bridges_in_the_group_do_not_block(desktop_facts):
    group = next(g for g in desktop_facts["iommu_groups"] if NVIDIA_GPU in g["devices"])
    assert ROOT_PORT in group["devices"]
    assert_ok(make_plan(desktop_facts, [NVIDIA_GPU]))


def test_an_unselected_group_member_blocks_and_is_named(lab_facts):
    facts = lab_facts("gpu-nvme-shared-group")
    plan = make_plan(facts, ["0000:04:00.0"])
    text = assert_errors(plan, "IOMMU group 0", "vfio-pci takes a whole group or nothing", "Add it to vfio_devices")
    assert plan["refusals"] == []
    assert f"0000:01:00.0 {label(facts, '0000:01:00.0')} (nvme0n1" in text          # the NVMe, with its disk
    assert f"0000:07:00.0 {label(facts, '0000:07:00.0')} (enp7s0)" in text         # the NIC, with its interface
    for blocker in ("0000:02:00.0", "0000:02:00.1"):
        assert blocker in text
    for bridge in ("0000:00:01.1", "0000:00:01.2", "0000:03:00.0", "0000:02:00.2"):  # bridges do not block
        assert bridge not in text
    assert "0000:04:00.1 " not in text.split("shares")[1]  # the companion is planned, not a blocker


def test_group_covered_by_the_selection_is_fine(lab_facts):
    facts = lab_facts("single-gpu-desktop")
    group11 = ["0000:00:1f.0", "0000:00:1f.3", "0000:00:1f.4", "0000:00:1f.5"]
    plan = make_plan(facts, group11, TAKE_OVER)
    assert_errors(plan, "shares IOMMU group 11 with 0000:00:1f.6")
    assert_ok(make_plan(facts, group11 + ["0000:00:1f.6"], TAKE_OVER))


# ---- refusals, each with its own override ----------------------------------------------------

def test_boot_display_refused_then_allowed(facts_of):
    facts = facts_of("single-gpu")
    plan = make_plan(facts, ["01:00.0"])
    r = assert_refused_only_by(plan, "boot_display")
    assert r["message"].startswith(f"{NVIDIA_GPU} {label(facts, NVIDIA_GPU)} drives the boot display")
    assert "no other GPU stays with the host" in r["message"]
    allowed = make_plan(facts, ["01:00.0"], {"allow_boot_display": True})
    assert_ok(allowed)
    assert any(f"{NVIDIA_GPU} {label(facts, NVIDIA_GPU)} drives the boot display" in w
               and w.endswith("(allowed by vfio_allow_boot_display: true)") for w in allowed["warnings"])


def test_boot_gpu_with_another_gpu_left_is_a_warning_not_a_refusal(lab_facts):
    facts = lab_facts("b550-navi21-split-audio")
    plan = make_plan(facts, ["0000:04:00.0", "0000:04:00.1", "0000:02:00.0", "0000:02:00.1", "0000:05:00.0"])  # group 15
    assert not [r for r in plan["refusals"] if r["code"] == "boot_display"]
    assert any("0000:04:00.0" in w and "shows the firmware's boot screen" in w and "0000:08:00.0" in w for w in plan["warnings"])


def test_the_connection_nic_refused_then_allowed(facts_of):
    facts = facts_of("in-use")
    assert facts["host_usage"]["connection"]["pci_addresses"] == [NIC]
    r = assert_refused_only_by(make_plan(facts, [NIC]), "connection_nic")
    msg = r["message"]
    assert msg.startswith(f"{NIC} {label(facts, NIC)} (eno1) carries the Ansible connection ({CONNECTION} on eno1)")
    assert "cuts this host off" in msg
    allowed = make_plan(facts, [NIC], {"allow_connection_nic": True})
    assert_ok(allowed)
    assert any(w.startswith(f"{NIC} ") and "(allowed by vfio_allow_connection_nic: true)" in w for w in allowed["warnings"])


def test_the_connection_nic_in_a_lab_machine(sysroot_base):
    root = build(PROFILE_DIR / "single-gpu-desktop.yml", sysroot_base / "lab-bindplan")
    p = load_profile(PROFILE_DIR / "single-gpu-desktop.yml")
    if "eno2" not in (p.get("network") or {}):
        pytest.skip("single-gpu-desktop has no network section")
    facts = gather_facts(str(root), connection_address="192.168.1.50")
    group11 = ["0000:00:1f.0", "0000:00:1f.3", "0000:00:1f.4", "0000:00:1f.5", "0000:00:1f.6"]
    r = assert_refused_only_by(make_plan(facts, group11, TAKE_OVER), "connection_nic")
    assert r["message"].startswith(f"0000:00:1f.6 {label(facts, '0000:00:1f.6')} (eno2) carries the Ansible connection")


def test_a_mounted_disk_refused_then_allowed(facts_of):
    facts = facts_of("in-use")
    plan = make_plan(facts, [NVME])
    assert_refused_only_by(plan, "mounted_disk")
    msgs = [r["message"] for r in plan["refusals"]]
    head = f"{NVME} {label(facts, NVME)} (nvme0n1, nvme0n1p1, nvme0n1p2, nvme0n1p3)"
    assert all(m.startswith(head) for m in msgs)
    assert any("holds nvme0n1p2, in use: / (ext4)" in m for m in msgs)
    assert any("holds nvme0n1p1, in use: /boot/efi (vfat)" in m for m in msgs)
    assert any("holds nvme0n1p3, in use: swap /dev/nvme0n1p3" in m for m in msgs)
    assert not any("swap swap" in m for m in msgs)  # the use is named once
    assert all("takes the disk from the running host" in m for m in msgs)
    allowed = make_plan(facts, [NVME], {"allow_mounted_disk": True})
    assert_ok(allowed)
    assert sum("(allowed by vfio_allow_mounted_disk: true)" in w for w in allowed["warnings"]) == 3


def test_the_root_nvme_of_a_lab_machine(lab_facts):
    facts = lab_facts("gpu-nvme-shared-group")
    if not facts["host_usage"]["in_use"].get("0000:01:00.0"):
        pytest.skip("gpu-nvme-shared-group has no mount table")
    group0 = ["0000:04:00.0", "0000:01:00.0", "0000:02:00.0", "0000:02:00.1", "0000:07:00.0"]
    plan = make_plan(facts, group0)
    assert_refused_only_by(plan, "mounted_disk")
    assert any(r["message"].startswith("0000:01:00.0 ") and "in use: / (ext4)" in r["message"] for r in plan["refusals"])


def test_iommu_off_refused_then_allowed(facts_of):
    facts = facts_of("iommu-off")
    assert facts["iommu"]["enabled"] is False
    r = assert_refused_only_by(make_plan(facts, ["01:00.0"]), "iommu_off")
    assert r["message"].startswith(f"the IOMMU is off on this host ({facts['iommu']['reason']})")
    assert all(p["fix"] in r["message"] for p in facts["iommu"]["problems"])
    allowed = make_plan(facts, ["01:00.0"], {"allow_iommu_off": True})
    assert_ok(allowed)
    assert addresses(allowed) == GPU_FUNCTIONS
    assert any("(allowed by vfio_allow_iommu_off: true)" in w for w in allowed["warnings"])


def test_an_unknown_address_refused_then_skipped(desktop_facts):
    r = assert_refused_only_by(make_plan(desktop_facts, ["0000:09:00.0", "01:00.0"]), "unknown_address")
    assert r["message"].startswith("0000:09:00.0 is not a PCI device on this host (see `lspci -D`)")
    allowed = make_plan(desktop_facts, ["0000:09:00.0", "01:00.0"], {"allow_missing_devices": True})
    assert_ok(allowed)
    assert addresses(allowed) == GPU_FUNCTIONS
    assert any(w.startswith("0000:09:00.0 is not a PCI device") and "vfio_allow_missing_devices" in w for w in allowed["warnings"])
    only_missing = make_plan(desktop_facts, ["0000:09:00.0"], {"allow_missing_devices": True})
    assert only_missing["status"] == "empty" and only_missing["files"] == {} and only_missing["devices"] == []


def test_an_empty_selection_refused_then_allowed(desktop_facts):
    r = assert_refused_only_by(make_plan(desktop_facts, [{"id": "dead:beef"}, {"name": "*Radeon*"}]), "empty_selection")
    assert r["message"].startswith("vfio_devices selects no device on this host (entries 1, 2 match nothing)")
    allowed = make_plan(desktop_facts, [{"id": "dead:beef"}], {"allow_empty_selection": True})
    assert allowed["status"] == "empty" and allowed["files"] == {} and allowed["refusals"] == []
    assert any("(allowed by vfio_allow_empty_selection: true)" in w for w in allowed["warnings"])


def test_everything_excluded_is_an_empty_selection(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0", {"id": "10de:1e87", "exclude": True}])
    assert_refused_only_by(plan, "empty_selection")


def test_several_refusals_are_all_reported(facts_of):
    facts = facts_of("in-use")
    plan = make_plan(facts, [NIC, NVME])
    assert {r["code"] for r in plan["refusals"]} == {"connection_nic", "mounted_disk"}
    assert_ok(make_plan(facts, [NIC, NVME], {"allow_connection_nic": True, "allow_mounted_disk": True}))


# ---- input errors: never overridable -------------------------------------------------------

@pytest.mark.parametrize("entries, needles", [
    (["0000:01:00.8"], ["'0000:01:00.8' is not a PCI address"]),
    ([{"id": "10de:1e8"}], ["'10de:1e8' is not a vendor:device id"]),
    ([{"address": "0000:00:01.0"}], ["0000:00:01.0 is a PCI bridge"]),
    (["01:00.0", {"address": "0000:01:00.0", "exclude": True}], ["0000:01:00.0 is both selected and excluded"]),
    ([{"address": NVIDIA_GPU, "id": "10de:1e87"}], ["exactly one of", "found address, id"]),
    ([NVIDIA_GPU, {"address": NVIDIA_AUDIO, "exclude": True}],
     [f"{NVIDIA_AUDIO} is excluded but it is companion of {NVIDIA_GPU} (same slot)", "every function of its slot"]),
    ([{"gpus": "discrete_except_boot"}, {"id": "10de:1ad9", "exclude": True}],
     [f"{NVIDIA_UCSI} is excluded but it is companion of {NVIDIA_GPU}"]),
    ("0000:01:00.0", ["must be a list"]),
])
def test_bad_input_is_an_error_no_option_overrides(desktop_facts, entries, needles):
    for options in ({}, ALL_OPTIONS):
        plan = make_plan(desktop_facts, entries, options)
        assert_errors(plan, *needles)


# ---- ids versus addresses ------------------------------------------------------------------

def test_identical_gpus_the_second_by_address(lab_facts):
    facts = lab_facts("dual-identical-gtx480-debian")
    plan = make_plan(facts, ["0000:02:00.0"], TAKE_OVER)
    assert_ok(plan)
    assert addresses(plan) == ["0000:02:00.0", "0000:02:00.1"]
    assert plan["ids"] == [] and sorted(plan["by_address"]) == ["0000:02:00.0", "0000:02:00.1"]
    found = directives(plan)
    assert found[0] == f"install vfio-pci {OVERRIDE_SCRIPT} $CMDLINE_OPTS"
    assert not any(line.startswith("options vfio-pci") for line in found)
    # nouveau drives the other card of that id: vfio-pci (through the script) must come first
    assert "softdep nouveau pre: vfio-pci" in found[1:] and all(line.startswith("softdep ") for line in found[1:])
    script = plan["files"][OVERRIDE_SCRIPT]
    assert script["mode"] == 0o755
    devs = next(line for line in script["content"].splitlines() if line.startswith("DEVS="))
    assert sorted(devs[len('DEVS="'):-1].split()) == ["0000:02:00.0", "0000:02:00.1"]
    assert "0000:01:00." not in script["content"] and "0000:01:00." not in plan["files"][MODPROBE_CONF]["content"]


def test_identical_gpus_shared_ids_by_address_the_rest_by_id(lab_facts):
    facts = lab_facts("dual-identical-gtx480-debian")
    plan = make_plan(facts, ["0000:02:00.0", "0000:03:00.0"], TAKE_OVER)  # + the ASMedia USB card, alone in its group
    assert_ok(plan)
    assert plan["ids"] == ["1b21:1242"] and sorted(plan["by_address"]) == ["0000:02:00.0", "0000:02:00.1"]
    assert directives(plan)[:2] == ["options vfio-pci ids=1b21:1242", f"install vfio-pci {OVERRIDE_SCRIPT} $CMDLINE_OPTS"]
    assert "0000:03:00.0" not in plan["files"][OVERRIDE_SCRIPT]["content"]


def test_both_identical_gpus_go_by_id(lab_facts):
    facts = lab_facts("dual-identical-gtx480-debian")
    plan = make_plan(facts, [{"id": "10de:06c0"}], {"allow_boot_display": True, **TAKE_OVER})
    assert_ok(plan)
    assert plan["ids"] == ["10de:06c0", "10de:0be5"] and plan["by_address"] == []
    assert plan["files"][OVERRIDE_SCRIPT] is None  # an earlier run's script is removed
    assert "options vfio-pci ids=10de:06c0,10de:0be5" in directives(plan)
    assert not any(line.startswith("install ") for line in directives(plan))


def test_identical_gt710_in_uppercase(lab_facts):
    plan = make_plan(lab_facts("dual-identical-gt710-fedora"), [{"address": "0000:0A:00.0"}], TAKE_OVER)
    assert_ok(plan)
    assert plan["ids"] == [] and sorted(plan["by_address"]) == ["0000:0a:00.0", "0000:0a:00.1"]


def test_one_of_two_identical_nvme_drives_by_address(lab_facts):
    facts = lab_facts("single-gpu-desktop")
    plan = make_plan(facts, ["0000:05:00.0"], TAKE_OVER)
    assert_ok(plan)
    assert plan["ids"] == [] and plan["by_address"] == ["0000:05:00.0"]
    assert "softdep nvme pre: vfio-pci" in directives(plan)


# ---- the persistent files ------------------------------------------------------------------

def test_modprobe_conf_of_the_desktop_gpu(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0"])
    assert_ok(plan)
    assert plan["ids"] == GPU_IDS and plan["by_address"] == []
    conf = plan["files"][MODPROBE_CONF]
    assert conf["mode"] == 0o644
    assert conf["content"].startswith("# Managed by exliar.vfio")
    assert "ansible-playbook playbooks/restore.yml" in conf["content"]
    found = directives(plan)
    assert found[0] == f"options vfio-pci ids={','.join(GPU_IDS)}"
    softdeps = found[1:]
    assert softdeps == sorted(softdeps) and all(re.fullmatch(r"softdep \S+ pre: vfio-pci", line) for line in softdeps)
    modules = {line.split()[1] for line in softdeps}
    assert {"nvidia", "snd_hda_intel", "xhci_hcd", "nvidia_gpu"} <= modules  # every displaced driver's module
    devs = by_address(desktop_facts["pci_devices"])
    known = {m for a in GPU_FUNCTIONS for m in [devs[a]["driver_module"], *devs[a]["kernel_modules"]] if m}
    assert modules <= known and "vfio_pci" not in modules
    assert not any(line.startswith("install ") for line in found)
    comments = [line for line in lines(plan) if line.startswith(f"# {NVIDIA_GPU}")]
    assert comments == [f"# {NVIDIA_GPU}  10de:1e87  {label(desktop_facts, NVIDIA_GPU)}  (was: nvidia; by id)"]
    assert plan["files"][OVERRIDE_SCRIPT] is None


def test_devices_record_what_they_leave(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0"])
    gpu = by_address(plan["devices"])[NVIDIA_GPU]
    assert gpu["driver"] == gpu["driver_before"] == "nvidia" and gpu["module_before"] == "nvidia"
    assert gpu["ids"] == "10de:1e87" and gpu["iommu_group"] == 1 and gpu["name"] == label(desktop_facts, NVIDIA_GPU)


def test_the_plan_record(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0"])
    spec = plan["files"][PLAN_RECORD]
    assert spec["mode"] == 0o644
    record = json.loads(spec["content"])
    assert record["version"] == 1
    assert [d["address"] for d in record["devices"]] == GPU_FUNCTIONS
    gpu = dict(record["devices"][0])
    assert "nvidia" in gpu.pop("modules")
    assert gpu == {"address": NVIDIA_GPU, "vendor_id": "10de", "device_id": "1e87", "class": "030000",
                   "iommu_group": 1, "driver_before": "nvidia", "module_before": "nvidia"}


def test_a_builtin_host_driver_is_a_warning(facts_of):
    facts = facts_of("builtin-xhci")
    plan = make_plan(facts, ["01:00.0"])
    assert_ok(plan)
    assert by_address(plan["devices"])[NVIDIA_USB]["module_before"] is None
    assert any(w.startswith(f"{NVIDIA_USB}: its driver xhci_hcd is built into the kernel") for w in plan["warnings"])


@pytest.mark.parametrize("by_addr", [["0000:02:00.0"], ["0000:02:00.0", "0000:02:00.1", "10000:e1:00.0"]])
def test_the_override_script_passes_sh_n(tmp_path, by_addr):
    path = tmp_path / "exliar-vfio-pci-override"
    text = render_override_script(by_addr)
    path.write_text(text)
    assert text.startswith("#!/bin/sh\n")
    assert f'DEVS="{" ".join(by_addr)}"' in text
    assert 'kmod_modprobe --ignore-install vfio-pci "$@" || exit $?' in text
    for shell in ("sh", "bash", "dash"):
        if shutil.which(shell) is None:
            continue
        proc = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (shell, proc.stderr)


def _kmod_modprobe(tmp_path, modprobe: str, *args: str) -> subprocess.CompletedProcess:
    """The override script's kmod_modprobe function, run by sh with ``modprobe`` first on PATH; its link
    directory (/run/exliar-vfio in the script) moved into tmp_path."""
    text = render_override_script(["0000:ee:00.0"])
    function = text[text.index("kmod_modprobe() {"):text.index("\n}\n") + 3].replace("/run/exliar-vfio", str(tmp_path / "run"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "modprobe").symlink_to(modprobe)
    env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(["sh", "-c", function + 'kmod_modprobe "$@"', "sh", *args], capture_output=True, text=True, env=env,
                          check=False)


def test_the_override_script_loads_vfio_pci_with_kmod_where_modprobe_is_busybox(tmp_path):
    """An initramfs with busybox (Debian and Ubuntu with the busybox package) can name busybox's modprobe
    modprobe; it has no --ignore-install, so the script calls kmod through a link named modprobe."""
    kmod = shutil.which("kmod")
    if kmod is None:
        pytest.skip("kmod is not installed")
    fake_busybox = tmp_path / "busybox-modprobe"
    fake_busybox.write_text("#!/bin/sh\necho 'Usage: modprobe [-alrqvsDb] MODULE [SYMBOL=VALUE]...' >&2\nexit 1\n")
    fake_busybox.chmod(0o755)
    busybox = shutil.which("busybox") or str(fake_busybox)   # the real one where it is installed
    proc = _kmod_modprobe(tmp_path, busybox, "--ignore-install", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kmod version"), proc.stdout
    assert os.readlink(tmp_path / "run" / "modprobe") == kmod


def test_the_override_script_uses_modprobe_itself_where_it_is_kmod(tmp_path):
    kmod = shutil.which("kmod")
    if kmod is None:
        pytest.skip("kmod is not installed")
    proc = _kmod_modprobe(tmp_path, kmod, "--ignore-install", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("kmod version"), proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_rendered_plan_script_passes_sh_n(lab_facts, tmp_path):
    plan = make_plan(lab_facts("dual-identical-gt710-fedora"), ["0000:0a:00.0"], TAKE_OVER)
    path = tmp_path / "script"
    path.write_text(plan["files"][OVERRIDE_SCRIPT]["content"])
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# ---- the drift guard -----------------------------------------------------------------------

def _record(plan: dict) -> dict:
    return json.loads(plan["files"][PLAN_RECORD]["content"])


def test_the_same_hardware_again_is_no_drift(desktop_facts):
    first = make_plan(desktop_facts, ["01:00.0"])
    again = make_plan(desktop_facts, ["01:00.0"], recorded=_record(first))
    assert_ok(again)
    assert again["files"] == first["files"] and not [w for w in again["warnings"] if "earlier run" in w]


def test_another_device_at_a_bound_address_is_refused(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, "usr/share/misc/pci.ids", PCI_IDS)
    first = make_plan(gather_facts(str(root)), ["01:00.0"])
    assert_ok(first)
    write(root, PLAN_RECORD, first["files"][PLAN_RECORD]["content"])   # as the run left it
    (root / dev_file(NVIDIA_GPU, "device")).write_text("0x1f07\n")    # an RTX 2070 in the slot now
    facts = gather_facts(str(root))
    recorded = facts["managed"]["bind"]
    assert recorded == _record(first)
    plan = make_plan(facts, ["01:00.0"], recorded=recorded)
    r = assert_refused_only_by(plan, "hardware_changed")
    assert r["message"].startswith(
        f"{NVIDIA_GPU} was 10de:1e87 (class 030000) when an earlier run bound it, and is now "
        f"10de:1f07 NVIDIA Corporation TU106 [GeForce RTX 2070 Rev. A]: the hardware changed")
    assert "run playbooks/restore.yml first" in r["message"]
    accepted = make_plan(facts, ["01:00.0"], {"accept_hardware_change": True}, recorded=recorded)
    assert_ok(accepted)
    assert "10de:1f07" in accepted["ids"] and "10de:1e87" not in accepted["ids"]
    assert any("(allowed by vfio_accept_hardware_change: true)" in w for w in accepted["warnings"])


def test_another_class_at_a_bound_address_is_refused(desktop_facts):
    recorded = _record(make_plan(desktop_facts, ["01:00.0"]))
    recorded["devices"][1]["class"] = "040100"
    r = assert_refused_only_by(make_plan(desktop_facts, ["01:00.0"], recorded=recorded), "hardware_changed")
    assert r["message"].startswith(f"{NVIDIA_AUDIO} was 10de:10f8 (class 040100)")


def test_drift_is_checked_also_when_the_selection_moved_on(desktop_facts):
    recorded = _record(make_plan(desktop_facts, ["01:00.0"]))
    recorded["devices"][0]["device_id"] = "2204"
    plan = make_plan(desktop_facts, [NVME], recorded=recorded)
    assert_refused_only_by(plan, "hardware_changed")


def test_a_bound_device_that_is_gone_is_a_warning(desktop_facts):
    recorded = _record(make_plan(desktop_facts, ["01:00.0"]))
    recorded["devices"].append({"address": "0000:05:00.0", "vendor_id": "1002", "device_id": "73bf", "class": "030000"})
    plan = make_plan(desktop_facts, ["01:00.0"], recorded=recorded)
    assert_ok(plan)
    assert "0000:05:00.0 (1002:73bf) was bound by an earlier run but is no longer on this host" in plan["warnings"]


# ---- the handoff to the initramfs and bootloader stages -------------------------------------

def test_handoff_of_the_desktop(desktop_facts):
    plan = make_plan(desktop_facts, ["01:00.0"])
    assert plan["initramfs"] == {"modules": {"6.1.0-18-amd64": ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"]},
                                 "files": [MODPROBE_CONF]}
    assert plan["kernel_params"] == []


def test_vfio_virqfd_only_before_6_2_and_builtins_left_out(facts_of):
    plan = make_plan(facts_of("kernels"), ["01:00.0"])
    assert_ok(plan)
    assert plan["initramfs"]["modules"] == {
        "5.15.0-91-generic": ["vfio_virqfd", "vfio_pci"],
        "6.1.0-18-amd64": ["vfio_virqfd", "vfio_pci"],
        "6.2.0-39-generic": ["vfio_pci"],
        "6.8.0-31-generic": ["vfio_pci"],
    }
    assert plan["kernel_params"] == []


def test_builtin_vfio_pci_gets_the_ids_on_the_kernel_command_line(facts_of):
    plan = make_plan(facts_of("builtin-vfio-pci"), ["01:00.0"])
    assert_ok(plan)
    assert plan["kernel_params"] == [f"vfio-pci.ids={','.join(GPU_IDS)}"]
    assert plan["initramfs"]["modules"] == {"6.1.0-18-amd64": ["vfio_virqfd"]}


def test_builtin_vfio_pci_with_devices_by_address(sysroot_base):
    p = load_profile(PROFILE_DIR / "dual-identical-gtx480-debian.yml")
    p["os"]["builtin_modules"] = ["vfio", "vfio_iommu_type1", "vfio_pci"]
    root = build_profile(p, sysroot_base / "bindplan" / "gtx480-builtin-vfio-pci")
    plan = make_plan(gather_facts(str(root)), ["0000:02:00.0", "0000:03:00.0"], TAKE_OVER)
    assert_ok(plan)
    assert plan["kernel_params"] == ["vfio-pci.ids=1b21:1242"]  # never the id the host's card shares
    assert any("vfio-pci is built into 4.9.0-3-amd64" in w and "0000:02:00.0" in w and "0000:02:00.1" in w
               for w in plan["warnings"])
    assert plan["initramfs"]["files"] == [MODPROBE_CONF, OVERRIDE_SCRIPT]


def test_a_kernel_without_vfio_pci_is_a_warning(facts_of):
    plan = make_plan(facts_of("no-vfio-pci"), ["01:00.0"])
    assert_ok(plan)
    assert any(w.startswith("kernel 6.1.0-18-amd64 lacks vfio_pci") for w in plan["warnings"])
    assert plan["initramfs"]["modules"] == {"6.1.0-18-amd64": ["vfio", "vfio_iommu_type1", "vfio_virqfd"]}


# ---- another vfio-pci configuration on the host ------------------------------------------------------

def test_a_foreign_install_line_is_refused_with_its_file_and_line(lab_facts):
    plan = make_plan(lab_facts("dual-identical-gt710-fedora"), ["0000:0a:00.0"])
    r = assert_refused_only_by(plan, "foreign_vfio_config")
    assert "/etc/modprobe.d/vfio.conf:1 `install vfio-pci /sbin/vfio-pci-override.sh`" in r["message"]
    assert r["message"].endswith("To do it anyway set vfio_take_over_vfio_config: true")


def test_taking_over_disables_the_foreign_lines_and_keeps_the_rest_of_the_file(lab_facts):
    facts = lab_facts("single-gpu-desktop")
    plan = make_plan(facts, ["0000:02:00.0"], {"allow_boot_display": True, **TAKE_OVER})
    assert_ok(plan)
    before = facts["managed"]["foreign_vfio_config"]["contents"]["/etc/modprobe.d/vfio.conf"]
    after = plan["files"]["/etc/modprobe.d/vfio.conf"]["content"]
    assert after == before.replace("options vfio-pci ids=10ee:5000,10ee:5001",
                                   "# disabled by exliar.vfio (playbooks/restore.yml brings it back): "
                                   "options vfio-pci ids=10ee:5000,10ee:5001")
    # the FPGA the user bound stays bound: its ids are carried into our options line
    assert "options vfio-pci ids=10de:228b,10de:2489,10ee:5000,10ee:5001" in directives(plan)
    assert plan["kept_options"] == {"ids": ["10ee:5000", "10ee:5001"], "params": []}


def test_a_taken_over_configuration_is_still_carried_on_the_next_run(lab_facts):
    """After the takeover the foreign line is a comment of ours: the ids stay in our file (idempotent)."""
    facts = copy.deepcopy(lab_facts("single-gpu-desktop"))
    first = make_plan(facts, ["0000:02:00.0"], {"allow_boot_display": True, **TAKE_OVER})
    for e in facts["managed"]["foreign_vfio_config"]["entries"]:
        e["state"] = "disabled"
    second = make_plan(facts, ["0000:02:00.0"], {"allow_boot_display": True})
    assert_ok(second)
    assert "/etc/modprobe.d/vfio.conf" not in second["files"]
    assert second["files"][MODPROBE_CONF] == first["files"][MODPROBE_CONF]


def test_foreign_ids_that_are_already_ours_are_only_a_warning(lab_facts):
    facts = lab_facts("apu-raven-rx580-debian")  # its vfio.conf binds the RX 580 alone; we add its audio
    plan = make_plan(facts, [{"gpus": "discrete_except_boot"}])
    assert_ok(plan)
    assert any("`options vfio-pci ids=1002:67df` also binds these ids" in w for w in plan["warnings"])
    assert not any(path.startswith("/etc/modprobe.d/vfio") for path in plan["files"])
