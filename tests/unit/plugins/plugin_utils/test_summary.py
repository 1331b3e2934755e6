"""The per-host summary a person reads at the end of a run."""
from __future__ import annotations

import copy

import pytest

from helpers import INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, PCI_IDS, ROOT_PORT, write

from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.plugin_utils._summary import render_host, render_summary

NO_PARAM = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0c6d7b2a ro quiet"


def block_of(lines, address):
    """The lines of one GPU: its own line and the indented lines under it."""
    start = next(i for i, line in enumerate(lines) if line.startswith("  gpu ") and address in line)
    out = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("     "):
            break
        out.append(line)
    return out


def facts_with_names(root):
    write(root, "usr/share/misc/pci.ids", PCI_IDS)
    return gather_facts(str(root))


def test_healthy_desktop(desktop_facts):
    lines = render_host("workstation", desktop_facts)
    text = "\n".join(lines)
    assert lines[0] == "workstation"
    assert "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64" in text
    assert "intel CPU (virtualization vmx)" in text and "UEFI, Secure Boot off" in text
    assert "  iommu      on (intel, 6 groups, interrupt remapping yes)" in lines
    assert "bootloader grub, initramfs initramfs-tools, vfio modules ready" in text
    assert "!" not in text and "warning" not in text
    nv = block_of(lines, NVIDIA_GPU)
    assert "TU104 [GeForce RTX 2080 Rev. A] [10de:1e87]" in nv[0]
    assert "(discrete)" in nv[0] and "driver nvidia" in nv[0]
    assert any(NVIDIA_AUDIO in line and "TU104 HD Audio Controller [10de:10f8]" in line for line in nv)
    assert nv[-1].strip() == "group 1: viable for passthrough"
    ig = block_of(lines, INTEL_IGPU)
    assert "integrated, boot display" in ig[0]


def test_non_viable_group_lists_its_blockers(make_sysroot):
    pci = [
        {"address": ROOT_PORT, "id": "8086:1901", "class": "060400", "driver": "pcieport", "group": 1},
        {"address": NVIDIA_GPU, "id": "10de:1e87", "class": "030000", "parent": ROOT_PORT, "driver": "nvidia",
         "group": 1},
        {"address": "0000:00:14.0", "id": "8086:a36d", "class": "0c0330", "driver": "xhci_hcd", "group": 1},
        {"address": "0000:00:1f.6", "id": "8086:15bc", "class": "020000", "driver": "e1000e", "group": 1},
    ]
    facts = facts_with_names(make_sysroot(pci=pci))
    nv = block_of(render_host("cheap-board", facts), NVIDIA_GPU)
    i = next(i for i, line in enumerate(nv) if "NOT viable" in line)
    assert "group 1" in nv[i]
    blockers = nv[i + 1:]
    assert len(blockers) == 2
    assert "0000:00:14.0" in blockers[0] and "Cannon Lake PCH USB 3.1 xHCI Host Controller [8086:a36d]" in blockers[0]
    assert "0000:00:1f.6" in blockers[1] and "[8086:15bc]" in blockers[1]
    assert not any(ROOT_PORT in line for line in blockers)  # the bridge does not block


def test_iommu_off_shows_what_to_fix(make_sysroot):
    facts = gather_facts(str(make_sysroot(pci=[
        {"address": NVIDIA_GPU, "id": "10de:1e87", "class": "030000", "driver": "nvidia"}],
        iommu=None, os={"cmdline": NO_PARAM})))
    lines = render_host("nogroups", facts)
    i = lines.index("  iommu      OFF")
    assert lines[i + 1].startswith("    ! ") and "intel_iommu=on" in lines[i + 1]
    assert lines[i + 2] == "      fix: add intel_iommu=on to the kernel parameters"
    assert block_of(lines, NVIDIA_GPU)[-1].strip() == "group: none (IOMMU off)"


def test_firmware_off_shows_the_firmware_setting(make_sysroot):
    facts = gather_facts(str(make_sysroot(pci=[], iommu=None, firmware={"acpi_tables": []},
                                          cpu={"vendor_id": "AuthenticAMD", "flags": ["svm"]})))
    text = render_summary({"ryzen": {"facts": facts, "failed": None}})
    assert "iommu      OFF" in text
    assert "fix: enable AMD IOMMU (AMD-Vi" in text
    assert "gpus       none" in text


def test_failed_and_unreachable_hosts_are_shown_next_to_the_others(desktop_facts):
    text = render_summary({
        "zeta": {"facts": desktop_facts, "failed": None},
        "alpha": {"facts": None, "failed": "Detect the host: Unsupported parameters for (vfio_facts) module: rot"},
        "mid": {"facts": None, "failed": "unreachable: Failed to connect to the host via ssh"},
    })
    lines = text.splitlines()
    assert [line for line in lines if line and not line.startswith(" ")] == ["alpha", "mid", "zeta"]
    assert lines[lines.index("alpha") + 1] == (
        "  FAILED     Detect the host: Unsupported parameters for (vfio_facts) module: rot")
    assert lines[lines.index("mid") + 1] == "  FAILED     unreachable: Failed to connect to the host via ssh"
    assert "group 1: viable for passthrough" in text  # the healthy host is still fully shown
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_host_that_failed_after_detection_shows_both(desktop_facts):
    lines = render_summary({"ws": {"facts": desktop_facts, "failed": "Configure vfio: boom"}}).splitlines()
    assert lines.count("ws") == 1
    assert "  FAILED     Configure vfio: boom" in lines
    assert any(line.startswith("  gpu ") for line in lines)


def test_system_line_variants(desktop_facts):
    f = copy.deepcopy(desktop_facts)
    f["system"]["boot"] = {"mode": "uefi", "secure_boot": None}
    f["system"]["machine"]["laptop"] = True
    line = render_host("h", f)[1]
    assert "Secure Boot unknown" in line and line.endswith(", laptop")
    f["system"]["boot"] = {"mode": "bios", "secure_boot": False}
    f["system"]["cpu"]["virtualization_flag"] = None
    line = render_host("h", f)[1]
    assert "BIOS" in line and "Secure Boot" not in line and "virtualization off" in line


def test_missing_vfio_modules_and_unknown_bootloader(desktop_facts):
    f = copy.deepcopy(desktop_facts)
    f["vfio_modules"]["ready"] = False
    f["bootloader"]["name"] = None
    text = "\n".join(render_host("h", f))
    assert "bootloader UNKNOWN" in text and "vfio modules MISSING for some kernel" in text


def test_identical_cards_and_companions_in_other_groups(make_sysroot):
    pci = [
        {"address": "0000:00:01.0", "id": "8086:1901", "class": "060400", "group": 1},
        {"address": "0000:00:01.1", "id": "8086:1905", "class": "060400", "group": 2},
        {"address": "0000:01:00.0", "id": "10de:2204", "class": "030000", "parent": "0000:00:01.0", "group": 1},
        {"address": "0000:01:00.1", "id": "10de:1aef", "class": "040300", "parent": "0000:00:01.0", "group": 12},
        {"address": "0000:02:00.0", "id": "10de:2204", "class": "030000", "parent": "0000:00:01.1", "group": 2},
    ]
    lines = render_host("twins", facts_with_names(make_sysroot(pci=pci)))
    first = block_of(lines, "0000:01:00.0")
    assert any("0000:01:00.1" in line and line.endswith(", group 12") for line in first)
    assert any("identical to 0000:02:00.0: select by address" in line for line in first)
    assert "GA102 [GeForce RTX 3090] [10de:2204]" in first[0]


def test_warnings_are_listed(desktop_facts):
    f = copy.deepcopy(desktop_facts)
    f["warnings"] = ["proc/cmdline: missing"]
    assert "  warning    proc/cmdline: missing" in render_host("h", f)


@pytest.mark.parametrize("facts", [{}, {"system": None, "iommu": None, "gpus": None}])
def test_sparse_facts_do_not_raise(facts):
    lines = render_host("sparse", facts)
    assert lines[0] == "sparse" and "  iommu      OFF" in lines and "  gpus       none" in lines


def test_virtualization_off_in_firmware_says_which_setting():
    facts = {"system": {"cpu": {"vendor": "intel", "virtualization_enabled": False, "hypervisor": False}},
             "iommu": {"enabled": True, "groups_count": 3}, "gpus": []}
    text = "\n".join(render_host("host", facts))
    assert "enable Intel VT-x" in text
    facts["system"]["cpu"] = {"vendor": "amd", "virtualization_enabled": False, "hypervisor": False}
    assert "enable AMD SVM" in "\n".join(render_host("host", facts))
    facts["system"]["cpu"]["virtualization_enabled"] = True
    assert "fix:" not in "\n".join(render_host("host", facts))
