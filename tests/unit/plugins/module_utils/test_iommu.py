"""IOMMU groups, and whether the IOMMU is on and exactly what to fix when it is not."""
from __future__ import annotations

import pytest

from helpers import CARD_PCI, INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, ROOT_PORT, config_gz, fs_of, remove, write

from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import parse_cmdline
from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.module_utils._iommu import iommu_groups, iommu_state, interrupt_remapping

KERNEL = "6.1.0-18-amd64"
NO_PARAM = f"BOOT_IMAGE=/boot/vmlinuz-{KERNEL} root=UUID=0c6d7b2a ro quiet"
AMD_CPU = {"vendor_id": "AuthenticAMD", "model_name": "AMD Ryzen 9 5950X 16-Core Processor", "flags": ["fpu", "svm"]}


def intel_off(**os_extra):
    """Intel desktop, VT-d on in firmware (DMAR published), kernel booted without IOMMU groups."""
    return dict(pci=CARD_PCI, iommu=None, os={"cmdline": NO_PARAM, **os_extra})


def amd_off(**os_extra):
    return dict(pci=CARD_PCI, iommu=None, cpu=AMD_CPU, firmware={"acpi_tables": ["IVRS"]},
                os={"cmdline": NO_PARAM, **os_extra})


def iommu_of(root):
    return gather_facts(str(root))["iommu"]


def codes(io):
    return [p["code"] for p in io["problems"]]


# ---- groups -----------------------------------------------------------------------------

def test_groups_with_their_members(desktop_facts):
    groups = {g["id"]: g["devices"] for g in desktop_facts["iommu_groups"]}
    assert sorted(groups) == [0, 1, 2, 3, 4, 5]
    assert groups[1] == [ROOT_PORT, NVIDIA_GPU, NVIDIA_AUDIO, "0000:01:00.2", "0000:01:00.3"]
    assert groups[2] == [INTEL_IGPU]
    assert [g["id"] for g in desktop_facts["iommu_groups"]] == sorted(groups)


def test_group_ids_sort_numerically(make_sysroot):
    pci = [dict(d, group={ROOT_PORT: 10, INTEL_IGPU: 2, NVIDIA_GPU: 10, NVIDIA_AUDIO: 9}[d["address"]])
           for d in CARD_PCI]
    groups = iommu_groups(fs_of(make_sysroot(pci=pci, iommu={"domain_type": "identity"})))
    assert [g["id"] for g in groups] == [2, 9, 10]
    assert groups[0]["type"] == "identity"


def test_no_groups_when_the_iommu_is_off(make_sysroot):
    assert iommu_groups(fs_of(make_sysroot(**intel_off()))) == []


# ---- IOMMU on ---------------------------------------------------------------------------

def test_intel_iommu_on(desktop_facts):
    io = desktop_facts["iommu"]
    assert io["enabled"] is True
    assert io["type"] == "intel"
    assert io["groups_count"] == 6
    assert io["units"] == ["dmar0", "dmar1"]
    assert io["firmware_table"] == "DMAR" and io["firmware_table_present"] is True
    assert io["interrupt_remapping"] is True
    assert io["problems"] == [] and io["params_needed"] == [] and io["reason"] is None
    assert io["passthrough_mode"] is False
    assert io["default_domain_type"] == "DMA-FQ"


def test_amd_iommu_on_without_any_parameter(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, cpu=AMD_CPU, firmware={"acpi_tables": ["IVRS"]},
                        iommu={"units": ["ivhd0"]}, os={"cmdline": NO_PARAM})
    io = iommu_of(root)
    assert io["enabled"] is True and io["type"] == "amd" and io["firmware_table"] == "IVRS"
    assert io["problems"] == [] and io["params_needed"] == []


def test_on_without_the_parameter_on_a_default_on_kernel(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, os={"cmdline": NO_PARAM, "kernel_config": {"CONFIG_INTEL_IOMMU_DEFAULT_ON": "y"}})
    io = iommu_of(root)
    assert io["enabled"] is True and io["problems"] == [] and io["params_needed"] == []


def test_passthrough_mode(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, os={"cmdline": NO_PARAM + " intel_iommu=on iommu=pt"},
                        iommu={"domain_type": "identity"})
    io = iommu_of(root)
    assert io["passthrough_mode"] is True and io["default_domain_type"] == "identity"


# ---- interrupt remapping ----------------------------------------------------------------

def test_interrupt_remapping_off_is_a_problem_but_not_the_reason_for_off(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, iommu={"irq_remapping": False})
    io = iommu_of(root)
    assert io["enabled"] is True
    assert io["interrupt_remapping"] is False
    assert codes(io) == ["no_interrupt_remapping"]
    assert "allow_unsafe_interrupts" in io["problems"][0]["what"]
    assert io["reason"] is None


def test_interrupt_remapping_from_proc_interrupts(tmp_path):
    write(tmp_path, "proc/interrupts",
          "            CPU0       CPU1\n"
          "   0:         45          0  IR-IO-APIC    2-edge      timer\n"
          " 124:          0      18027  IR-PCI-MSIX-0000:01:00.0    0-edge      nvidia\n")
    assert interrupt_remapping(fs_of(tmp_path), True) is True
    write(tmp_path, "proc/interrupts", "           CPU0\n 120:   0   PCI-MSI 327680-edge  xhci_hcd\n")
    assert interrupt_remapping(fs_of(tmp_path), True) is False
    assert interrupt_remapping(fs_of(tmp_path), False) is None  # no IOMMU: nothing to conclude
    remove(tmp_path, "proc/interrupts")
    assert interrupt_remapping(fs_of(tmp_path), True) is None


# ---- IOMMU off: why, and what to fix -----------------------------------------------------

def test_intel_without_the_parameter_needs_intel_iommu_on(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off()))
    assert io["enabled"] is False
    assert io["type"] == "intel"
    assert io["firmware_table_present"] is True
    assert codes(io) == ["param_missing"]
    assert io["params_needed"] == ["intel_iommu=on"]
    assert "intel_iommu=on" in io["problems"][0]["fix"]
    assert io["reason"] and "intel_iommu=on" in io["reason"]
    assert io["groups_count"] == 0 and io["interrupt_remapping"] is None


def test_intel_default_on_kernel_needs_no_parameter(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(kernel_config={"CONFIG_INTEL_IOMMU_DEFAULT_ON": "y"})))
    assert io["enabled"] is False
    assert io["params_needed"] == []
    assert "param_missing" not in codes(io)
    assert codes(io) == ["no_groups"]


def test_default_on_read_from_proc_config_gz(make_sysroot):
    root = make_sysroot(**intel_off())
    remove(root, f"boot/config-{KERNEL}")
    write(root, "proc/config.gz", config_gz("CONFIG_INTEL_IOMMU=y\nCONFIG_INTEL_IOMMU_DEFAULT_ON=y\n"))
    io = iommu_of(root)
    assert io["params_needed"] == [] and "param_missing" not in codes(io)


def test_default_on_explicitly_not_set(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(kernel_config={"CONFIG_INTEL_IOMMU_DEFAULT_ON": "n"})))
    assert io["params_needed"] == ["intel_iommu=on"]


def test_parameter_given_but_still_no_groups(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=on,sm_on")))
    assert io["params_needed"] == []
    assert codes(io) == ["no_groups"]
    assert "dmesg" in io["problems"][0]["fix"]


@pytest.mark.parametrize("vendor,setting", [("intel", "VT-d"), ("amd", "AMD-Vi")])
def test_firmware_off_names_the_firmware_setting(make_sysroot, vendor, setting):
    kw = intel_off() if vendor == "intel" else amd_off()
    kw["firmware"] = {"acpi_tables": []}
    io = iommu_of(make_sysroot(**kw))
    assert io["enabled"] is False
    assert io["firmware_table_present"] is False
    assert "firmware_off" in codes(io)
    fix = next(p["fix"] for p in io["problems"] if p["code"] == "firmware_off")
    assert setting in fix
    assert "UEFI" in fix or "BIOS" in fix
    if vendor == "amd":
        assert "IOMMU" in fix


def test_intel_iommu_off_on_the_command_line(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=off")))
    assert "param_intel_off" in codes(io)
    assert "intel_iommu=on" in next(p["fix"] for p in io["problems"] if p["code"] == "param_intel_off")
    assert io["params_needed"] == ["intel_iommu=on"]


def test_the_last_intel_iommu_wins(make_sysroot):
    later_off = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=on intel_iommu=off")))
    assert "param_intel_off" in codes(later_off)
    later_on = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=off intel_iommu=on")))
    assert "param_intel_off" not in codes(later_on)
    assert later_on["params_needed"] == []


def test_intel_iommu_off_on_a_default_on_kernel(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=off",
                                           kernel_config={"CONFIG_INTEL_IOMMU_DEFAULT_ON": "y"})))
    assert codes(io) == ["param_intel_off"]
    assert io["params_needed"] == []


def test_iommu_off_on_the_command_line(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(cmdline=NO_PARAM + " intel_iommu=on iommu=off")))
    assert codes(io) == ["param_iommu_off"]
    assert "iommu=off" in io["problems"][0]["fix"]
    assert "iommu=off" in io["reason"]


def test_amd_iommu_off_on_the_command_line(make_sysroot):
    io = iommu_of(make_sysroot(**amd_off(cmdline=NO_PARAM + " amd_iommu=off")))
    assert io["type"] == "amd"
    assert codes(io) == ["param_amd_off"]
    assert io["params_needed"] == []  # AMD needs no parameter to turn it on


def test_amd_with_everything_right_but_no_groups(make_sysroot):
    io = iommu_of(make_sysroot(**amd_off()))
    assert codes(io) == ["no_groups"]
    assert io["params_needed"] == []


def test_kernel_without_the_intel_iommu_driver(make_sysroot):
    io = iommu_of(make_sysroot(**intel_off(kernel_config={"CONFIG_INTEL_IOMMU": "n"})))
    assert codes(io) == ["kernel_no_driver"]
    assert io["params_needed"] == []  # a parameter cannot help


def test_kernel_without_the_amd_iommu_driver(make_sysroot):
    io = iommu_of(make_sysroot(**amd_off(kernel_config={"CONFIG_AMD_IOMMU": "n"})))
    assert codes(io) == ["kernel_no_driver"]


def test_unknown_cpu_vendor(make_sysroot):
    kw = intel_off()
    kw["firmware"] = {"acpi_tables": []}
    io = iommu_of(make_sysroot(**kw, cpu={"vendor_id": "CentaurHauls", "flags": ["fpu"]}))
    assert io["type"] is None
    assert codes(io) == ["unknown_platform"]


def test_a_dmar_table_means_vt_d_whatever_the_cpu_vendor(make_sysroot):
    """Zhaoxin (CentaurHauls) machines publish a DMAR table and use the Intel IOMMU driver."""
    io = iommu_of(make_sysroot(**intel_off(), cpu={"vendor_id": "CentaurHauls", "flags": ["fpu"]}))
    assert io["type"] == "intel" and io["firmware_table_present"] is True
    assert "intel_iommu=on" in io["params_needed"]


def test_vendor_from_the_iommu_units_when_the_cpu_is_unknown(tmp_path):
    write(tmp_path, "sys/class/iommu/ivhd0/devices/.keep")
    io = iommu_state(fs_of(tmp_path), None, [], [{"id": 0, "devices": ["0000:00:00.0"], "type": "DMA"}], None)
    assert io["type"] == "amd" and io["enabled"] is True


def test_unreadable_acpi_tables_do_not_claim_firmware_off(tmp_path):
    # without root, /sys/firmware/acpi/tables is unreadable: the table's presence is unknown
    io = iommu_state(fs_of(tmp_path), "intel", parse_cmdline(NO_PARAM), [], KERNEL)
    assert io["firmware_table_present"] is None
    assert "firmware_off" not in codes(io)
    assert io["params_needed"] == ["intel_iommu=on"]


def test_every_reason_is_given(make_sysroot):
    kw = intel_off(cmdline=NO_PARAM + " intel_iommu=off")
    kw["firmware"] = {"acpi_tables": []}
    io = iommu_of(make_sysroot(**kw))
    assert set(codes(io)) == {"param_intel_off", "firmware_off"}
    assert "intel_iommu=off" in io["reason"] and "DMAR" in io["reason"] and "; " in io["reason"]


def test_the_iommu_units_say_what_the_iommu_is_not_the_cpu(make_sysroot):
    """A VM on an AMD host with a virtual Intel IOMMU: AuthenticAMD CPU, dmar0, DMAR table."""
    on = iommu_of(make_sysroot(pci=CARD_PCI, cpu=AMD_CPU, firmware={"acpi_tables": ["DMAR"]},
                               iommu={"units": ["dmar0"], "irq_remapping": True}))
    assert on["type"] == "intel" and on["firmware_table"] == "DMAR" and on["firmware_table_present"] is True
    off = iommu_of(make_sysroot(pci=CARD_PCI, cpu=AMD_CPU, firmware={"acpi_tables": ["DMAR"]}, iommu=None,
                                os={"cmdline": NO_PARAM}))
    assert off["type"] == "intel" and "intel_iommu=on" in off["params_needed"]
