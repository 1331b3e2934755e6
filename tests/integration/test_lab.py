"""The built-in lab: the real playbook over sysroots of real machines, checked against the sources."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest
import yaml

from build_sysroot import build
from conftest import PROFILES, lab_inventory_hosts
from labrun import REPO, VENV_BIN, ansible_env, assert_matches_expect, cached_facts, recap, run_playbook

HEX4 = re.compile(r"^[0-9a-f]{4}$")
BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


def test_inventory_lists_every_profile():
    assert lab_inventory_hosts() == sorted(PROFILES)


def test_lab_has_the_required_coverage(profiles):
    assert len(profiles) >= 10
    assert all(p["sources"] and all(s.get("url", "").startswith("http") for s in p["sources"]) for p in profiles.values())
    flavours = {(p["os"].get("bootloader"), p["os"].get("initramfs")) for p in profiles.values()}
    bootloaders = {b for b, _i in flavours}
    initramfs = {i for _b, i in flavours}
    assert {"grub", "grubby", "systemd-boot", "kernelstub"} <= bootloaders
    assert {"initramfs-tools", "dracut", "mkinitcpio"} <= initramfs


# The lab's selections (lab/inventory.yml) that the binding stage must refuse, and why.
REFUSED = {
    "gpu-nvme-shared-group": "shares IOMMU group 0 with 0000:01:00.0",
    "intel-iommu-param-missing": "the IOMMU is off",
    "iommu-off-firmware": "the IOMMU is off",
    "laptop-3d-controller": "the IOMMU is off",
    "single-gpu-desktop": "drives the boot display and no other GPU stays with the host",
    "dual-identical-gt710-fedora": "/etc/modprobe.d/vfio.conf:1 `install vfio-pci /sbin/vfio-pci-override.sh` already configure",
}
NOTHING_SELECTED = {"server-bmc-only"}


def test_playbook_binds_the_lab_and_refuses_what_is_unsafe(lab_run):
    proc = lab_run["proc"]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # 2: some hosts failed, as planned
    assert sorted(lab_run["recap"]) == sorted(PROFILES)
    for host, counts in lab_run["recap"].items():
        assert counts["unreachable"] == 0, host
        if host in REFUSED:
            assert counts["failed"] == 1 and counts["changed"] == 0, host
            assert re.search(rf"fatal: \[{re.escape(host)}\].*{re.escape(REFUSED[host])}", proc.stdout), host
        else:
            assert counts["failed"] == 0, host
            assert (counts["changed"] == 0) if host in NOTHING_SELECTED else (counts["changed"] >= 1), host  # bind (+ initramfs)


def test_a_second_run_changes_nothing(lab_run, tmp_path):
    proc = run_playbook(tmp_path, "playbooks/vfio.yml")
    counts = recap(proc.stdout)
    assert sorted(h for h, c in counts.items() if c["failed"]) == sorted(REFUSED)
    assert all(c["changed"] == 0 for c in counts.values()), counts


def test_summary_names_every_host_and_its_gpus(lab_run, lab_facts):
    out = lab_run["proc"].stdout
    summary = out[out.index("VFIO SUMMARY"):]
    for host, facts in lab_facts.items():
        assert re.search(rf"^{re.escape(host)}$", summary, re.M), host
        for gpu in facts["gpus"]:
            assert gpu["address"] in summary


@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_facts_match_what_the_source_shows(pid, lab_facts, profiles):
    expect = profiles[pid]["expect"]
    facts = lab_facts[pid]
    assert_matches_expect(facts, expect, pid)
    if not expect["iommu_enabled"]:
        assert facts["iommu"]["problems"], "an IOMMU that is off must come with a reason and a fix"
        assert all(p["fix"] for p in facts["iommu"]["problems"])


@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_facts_follow_the_contract(pid, lab_facts):
    facts = lab_facts[pid]
    for d in facts["pci_devices"]:
        assert BDF.match(d["address"])
        assert HEX4.match(d["vendor_id"]) and HEX4.match(d["device_id"])
        assert re.match(r"^[0-9a-f]{6}$", d["class"])
        assert d["driver"] is None or isinstance(d["driver"], str)
        assert d["iommu_group"] is None or isinstance(d["iommu_group"], int)
        assert isinstance(d["boot_vga"], bool)
        assert isinstance(d["reset_methods"], list)
    grouped = sorted(a for g in facts["iommu_groups"] for a in g["devices"])
    if facts["iommu"]["enabled"]:
        assert grouped == sorted(d["address"] for d in facts["pci_devices"] if d["iommu_group"] is not None)
    else:
        assert grouped == [] and all(g["group_viable"] is None for g in facts["gpus"])
    assert [g["address"] for g in facts["gpus"]] == [d["address"] for d in facts["pci_devices"] if d["class"].startswith("03")]
    assert facts["warnings"] == [], facts["warnings"]


def _lspci_vmm(root) -> dict:
    out = subprocess.run(
        ["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/sys/bus/pci", "-vmm", "-nn", "-D", "-k"],
        capture_output=True, text=True, check=True).stdout
    devices = {}
    for block in out.strip().split("\n\n"):
        rec = dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        devices[rec["Slot"]] = rec
    return devices


@pytest.mark.skipif(shutil.which("lspci") is None, reason="pciutils not installed (./dev.sh setup installs it)")
@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_real_lspci_reads_the_sysroot_and_agrees(pid, sysroots, lab_facts):
    seen = _lspci_vmm(sysroots[pid])
    facts = {d["address"]: d for d in lab_facts[pid]["pci_devices"]}
    assert sorted(seen) == sorted(facts)
    for addr, rec in seen.items():
        d = facts[addr]
        assert rec["Vendor"].endswith(f"[{d['vendor_id']}]")
        assert rec["Device"].endswith(f"[{d['device_id']}]")
        assert rec["Class"].endswith(f"[{d['class'][:4]}]")
        assert rec.get("Driver") == d["driver"]
        assert rec.get("IOMMUGroup") == (str(d["iommu_group"]) if d["iommu_group"] is not None else None)


def test_check_mode_predicts_the_changes_and_changes_nothing(tmp_path):
    """On a fresh copy of the lab (the inventory beside its own .sysroots), --check --diff shows the
    binding stage's files and writes nothing."""
    lab = tmp_path / "lab"
    lab.mkdir()
    shutil.copy(REPO / "lab" / "inventory.yml", lab / "inventory.yml")
    for pid, path in PROFILES.items():
        build(path, lab / ".sysroots")
    before = _tree(lab / ".sysroots")
    proc = run_playbook(tmp_path, "playbooks/vfio.yml", "--check", "--diff", inventory=lab / "inventory.yml")
    counts = recap(proc.stdout)
    assert sorted(h for h, c in counts.items() if c["failed"]) == sorted(REFUSED), proc.stdout[-3000:]
    assert counts["desktop-intel-turing"]["changed"] == 3  # the binding stage, the initramfs and the bootloader configuration
    assert "+options vfio-pci ids=" in proc.stdout and "/etc/modprobe.d/exliar-vfio.conf" in proc.stdout
    # the bootloader stage's diff (grubby/BLS entries on this Fedora host) and its prediction in the summary
    assert "/boot/loader/entries/" in proc.stdout and "+options " in proc.stdout
    assert "next boot: root=UUID=3b5b0e8a-9a4c-4d62-9c1e-8b8e5f0c2a71 ro rootflags=subvol=root rhgb quiet intel_iommu=on" in proc.stdout
    assert _tree(lab / ".sysroots") == before


def _tree(root) -> dict:
    """Every path below root with its mode and content digest (links: their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            out[rel] = ("dir", path.stat().st_mode)
    return out


def _write_inventory(tmp_path, hosts: dict):
    inv = {"all": {"vars": {"ansible_connection": "local",
                            "ansible_python_interpreter": str(VENV_BIN / "python")},
                   "hosts": {h: {"vfio_root": str(r)} for h, r in hosts.items()}}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def test_bad_roots_are_reported_not_fatal(sysroots, tmp_path):
    any_root = next(iter(sysroots.values()))
    broken = tmp_path / "broken"
    shutil.copytree(any_root, broken, symlinks=True)
    first = sorted((broken / "sys/bus/pci/devices").iterdir())[0]
    (first.resolve() / "class").write_text("garbage\n")
    (broken / "usr/lib/os-release").unlink()
    inv = _write_inventory(tmp_path, {"missing-root": tmp_path / "does-not-exist", "broken": broken})
    proc = run_playbook(tmp_path, "playbooks/vfio.yml", inventory=inv)
    assert proc.returncode == 0, proc.stdout[-3000:]
    missing = cached_facts(tmp_path, "missing-root")["vfio"]
    assert any("does-not-exist" in w or "not a directory" in w for w in missing["warnings"])
    assert missing["pci_devices"] == [] and missing["iommu"]["enabled"] is False
    bad = cached_facts(tmp_path, "broken")["vfio"]
    assert any(w.endswith("class: unexpected content 'garbage', ignored") for w in bad["warnings"])
    assert any("os-release" in w for w in bad["warnings"])
    assert bad["system"]["distribution"]["id"] is None
    assert next(d for d in bad["pci_devices"] if d["address"] == first.name)["class"] is None
    assert "warning" in proc.stdout[proc.stdout.index("VFIO SUMMARY"):]


def test_a_wrong_option_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-m", "exliar.vfio.vfio_facts", "-a", "rooot=/"],
        cwd=REPO, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "rooot" in proc.stdout + proc.stderr
