"""GPUs: which devices, integrated or discrete, companions, group verdicts and identical cards."""
from __future__ import annotations

import pytest

from helpers import (
    INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, NVIDIA_UCSI, NVIDIA_USB, PCI_IDS, ROOT_PORT, by_address, dev_file, fs_of,
    make_unreadable_dir, write,
)

from ansible_collections.exliar.vfio.plugins.module_utils._iommu import iommu_groups
from ansible_collections.exliar.vfio.plugins.module_utils._gpu import build_gpus, is_integrated
from ansible_collections.exliar.vfio.plugins.module_utils._pci import PciDevice, scan_pci

AMD_CPU = {"vendor_id": "AuthenticAMD", "model_name": "AMD Ryzen 7 5700G with Radeon Graphics",
           "flags": ["fpu", "svm"]}


def gpus_of(root):
    return by_address(build_gpus(scan_pci(fs_of(root)), iommu_groups(fs_of(root))))


def dev(address, vid_did, klass, group=None, parent=None, driver=None, **kw):
    d = {"address": address, "id": vid_did, "class": klass}
    if group is not None:
        d["group"] = group
    if parent:
        d["parent"] = parent
    if driver:
        d["driver"] = driver
    d.update(kw)
    return d


# ---- the base desktop: Intel iGPU + NVIDIA card ------------------------------------------

def test_desktop_gpus(desktop_facts):
    gpus = by_address(desktop_facts["gpus"])
    assert sorted(gpus) == [INTEL_IGPU, NVIDIA_GPU]
    nv = gpus[NVIDIA_GPU]
    assert nv["vendor"] == "nvidia" and nv["kind"] == "discrete" and nv["bmc"] is False
    assert nv["boot_vga"] is False and nv["driver"] == "nvidia" and nv["iommu_group"] == 1
    assert nv["companions"] == [NVIDIA_AUDIO, NVIDIA_USB, NVIDIA_UCSI]
    assert nv["group_viable"] is True and nv["group_blockers"] == []  # the root port shares the group: fine
    assert nv["identical_to"] == []
    assert nv["vendor_name"] == "NVIDIA Corporation"
    assert nv["device_name"] == "TU104 [GeForce RTX 2080 Rev. A]"
    assert nv["reset_methods"] == ["flr", "bus"]
    ig = gpus[INTEL_IGPU]
    assert ig["vendor"] == "intel" and ig["kind"] == "integrated" and ig["boot_vga"] is True
    assert ig["companions"] == [] and ig["group_viable"] is True


# ---- which devices are GPUs ---------------------------------------------------------------

def test_every_display_class_is_a_gpu_and_nothing_else(make_sysroot):
    pci = [
        dev("0000:00:01.0", "8086:1901", "060400", 1, driver="pcieport"),
        dev("0000:00:02.0", "8086:3e92", "038000", 2, driver="i915"),             # iGPU as secondary display
        dev("0000:00:03.0", "1234:1111", "030100", 3),                             # XGA
        dev("0000:01:00.0", "10de:1f95", "030200", 1, "0000:00:01.0", "nvidia"),   # laptop dGPU: 3D controller
        dev("0000:01:00.1", "10de:10fa", "040300", 1, "0000:00:01.0"),             # audio: not a GPU
        dev("0000:00:14.0", "8086:a36d", "0c0330", 4, driver="xhci_hcd"),
        dev("0000:00:05.0", "1b36:0100", "030000", 5, boot_vga=True),              # plain VGA
    ]
    gpus = gpus_of(make_sysroot(pci=pci))
    assert sorted(gpus) == ["0000:00:02.0", "0000:00:03.0", "0000:00:05.0", "0000:01:00.0"]
    assert gpus["0000:00:02.0"]["kind"] == "integrated" and gpus["0000:00:02.0"]["class"] == "038000"
    assert gpus["0000:01:00.0"]["kind"] == "discrete" and gpus["0000:01:00.0"]["companions"] == ["0000:01:00.1"]
    assert gpus["0000:00:05.0"]["vendor"] == "other" and gpus["0000:00:05.0"]["boot_vga"] is True


def test_no_gpu(make_sysroot):
    pci = [dev("0000:00:00.0", "8086:3e30", "060000", 0), dev("0000:00:14.0", "8086:a36d", "0c0330", 1)]
    assert gpus_of(make_sysroot(pci=pci)) == {}


def test_device_with_unreadable_class_is_not_a_gpu(make_sysroot):
    pci = [dev(ROOT_PORT, "8086:1901", "060400", 1), dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT)]
    root = make_sysroot(pci=pci)
    write(root, dev_file(NVIDIA_GPU, "class"), "garbage\n")
    assert gpus_of(root) == {}


# ---- integrated or discrete ---------------------------------------------------------------

def test_amd_apu_and_amd_discrete_card(make_sysroot):
    pci = [
        dev("0000:00:00.0", "1022:1630", "060000", 0),
        dev("0000:00:01.0", "1022:1632", "060000", 1),                              # dummy host bridge
        dev("0000:00:01.1", "1022:1633", "060400", 2, driver="pcieport"),           # GPP bridge (root port)
        dev("0000:01:00.0", "1002:1478", "060400", 2, "0000:00:01.1", "pcieport"),  # GPU's switch: upstream
        dev("0000:02:00.0", "1002:1479", "060400", 2, "0000:01:00.0", "pcieport"),  # downstream
        dev("0000:03:00.0", "1002:73bf", "030000", 2, "0000:02:00.0", "amdgpu"),
        dev("0000:03:00.1", "1002:ab28", "040300", 2, "0000:02:00.0", "snd_hda_intel"),
        dev("0000:00:08.1", "1022:1635", "060400", 3, driver="pcieport"),           # internal bridge to the APU
        dev("0000:07:00.0", "1002:1638", "030000", 3, "0000:00:08.1", "amdgpu", boot_vga=True),
        dev("0000:07:00.1", "1002:1637", "040300", 3, "0000:00:08.1", "snd_hda_intel"),
        dev("0000:07:00.3", "1022:1639", "0c0330", 3, "0000:00:08.1", "xhci_hcd"),
    ]
    root = make_sysroot(pci=pci, cpu=AMD_CPU, firmware={"acpi_tables": ["IVRS"]}, iommu={"units": ["ivhd0"]})
    write(root, "usr/share/misc/pci.ids", PCI_IDS)
    gpus = gpus_of(root)
    dgpu, apu = gpus["0000:03:00.0"], gpus["0000:07:00.0"]
    assert dgpu["vendor"] == "amd" and dgpu["kind"] == "discrete"
    assert dgpu["companions"] == ["0000:03:00.1"]
    assert dgpu["group_viable"] is True and dgpu["group_blockers"] == []  # only bridges besides the card
    assert dgpu["device_name"] == "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"
    assert apu["vendor"] == "amd" and apu["kind"] == "integrated" and apu["boot_vga"] is True
    assert apu["companions"] == ["0000:07:00.1", "0000:07:00.3"]


def test_server_with_aspeed_bmc_and_nvidia_compute_card(make_sysroot):
    pci = [
        dev("0000:00:1c.0", "8086:a190", "060400", 7, driver="pcieport"),
        dev("0000:02:00.0", "1a03:1150", "060400", 7, "0000:00:1c.0"),           # ASPEED PCIe-to-PCI bridge
        dev("0000:03:00.0", "1a03:2000", "030000", 7, "0000:02:00.0", "ast", boot_vga=True, pcie="pci"),
        dev("0000:00:03.0", "8086:2032", "060400", 8, driver="pcieport"),
        dev("0000:17:00.0", "10de:1eb8", "030200", 8, "0000:00:03.0", "nvidia"),  # Tesla T4
    ]
    gpus = gpus_of(make_sysroot(pci=pci, machine={"chassis_type": 23}))
    bmc = gpus["0000:03:00.0"]
    assert bmc["kind"] == "integrated" and bmc["bmc"] is True and bmc["vendor"] == "other"
    assert bmc["boot_vga"] is True
    t4 = gpus["0000:17:00.0"]
    assert t4["kind"] == "discrete" and t4["bmc"] is False and t4["group_viable"] is True


def test_nvidia_on_a_root_bus_is_still_discrete(make_sysroot):
    # e.g. a VM guest with the card on the root bus of an i440fx machine
    pci = [dev("0000:00:00.0", "8086:1237", "060000", 0),
           dev("0000:00:05.0", "10de:2204", "030000", 1, driver="nvidia")]
    gpu = gpus_of(make_sysroot(pci=pci))["0000:00:05.0"]
    assert gpu["kind"] == "discrete" and gpu["vendor"] == "nvidia"


def test_intel_arc_card_is_discrete(make_sysroot):
    pci = [
        dev("0000:00:01.0", "8086:a70d", "060400", 1, driver="pcieport"),
        dev("0000:01:00.0", "8086:4fa1", "060400", 1, "0000:00:01.0", "pcieport"),
        dev("0000:02:01.0", "8086:4fa4", "060400", 1, "0000:01:00.0", "pcieport"),
        dev("0000:03:00.0", "8086:56a0", "030000", 1, "0000:02:01.0", "i915"),
        dev("0000:00:02.0", "8086:a780", "030000", 2, driver="i915", boot_vga=True),
    ]
    gpus = gpus_of(make_sysroot(pci=pci))
    assert gpus["0000:03:00.0"]["kind"] == "discrete" and gpus["0000:03:00.0"]["vendor"] == "intel"
    assert gpus["0000:00:02.0"]["kind"] == "integrated"


@pytest.mark.parametrize("device_id", ["1638", "15d8", "164e", "1681", "15bf", "150e"])
def test_amd_apu_ids_are_integrated_behind_their_internal_bridge(device_id):
    d = PciDevice(address="0000:07:00.0", vendor_id="1002", device_id=device_id, class_code="030000",
                  parent="0000:00:08.1")
    assert is_integrated(d)


def test_amd_discrete_ids_behind_a_bridge_are_discrete():
    d = PciDevice(address="0000:03:00.0", vendor_id="1002", device_id="744c", class_code="030000",
                  parent="0000:02:00.0")
    assert not is_integrated(d)


# ---- group verdicts -----------------------------------------------------------------------

def test_group_shared_with_other_devices_is_not_viable(make_sysroot):
    pci = [
        dev(ROOT_PORT, "8086:1901", "060400", 1, driver="pcieport"),
        dev("0000:00:1c.0", "8086:a338", "060400", 1, driver="pcieport"),
        dev("0000:00:1e.0", "8086:244e", "060940", 1),                            # semi-transparent bridge 0609
        dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT, "nvidia"),
        dev(NVIDIA_AUDIO, "10de:10f8", "040300", 1, ROOT_PORT, "snd_hda_intel"),
        dev("0000:00:14.0", "8086:a36d", "0c0330", 1, driver="xhci_hcd"),
        dev("0000:02:00.0", "8086:15f3", "020000", 1, "0000:00:1c.0", "igc", net=["enp2s0"]),
        dev(INTEL_IGPU, "8086:3e98", "030000", 2, driver="i915", boot_vga=True),
    ]
    gpus = gpus_of(make_sysroot(pci=pci))
    nv = gpus[NVIDIA_GPU]
    assert nv["group_viable"] is False
    assert nv["group_blockers"] == ["0000:00:14.0", "0000:02:00.0"]  # no bridge, no function of the card
    assert nv["companions"] == [NVIDIA_AUDIO]
    assert gpus[INTEL_IGPU]["group_viable"] is True


def test_companion_in_another_group_is_still_a_companion(make_sysroot):
    pci = [
        dev(ROOT_PORT, "8086:1901", "060400", 1, driver="pcieport"),
        dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT, "nvidia"),
        dev(NVIDIA_AUDIO, "10de:10f8", "040300", 12, ROOT_PORT, "snd_hda_intel"),
    ]
    nv = gpus_of(make_sysroot(pci=pci))[NVIDIA_GPU]
    assert nv["companions"] == [NVIDIA_AUDIO]
    assert nv["slot_groups"] == [1, 12]
    assert nv["group_viable"] is True and nv["group_blockers"] == []


def test_functions_of_the_same_slot_never_block(make_sysroot):
    pci = [
        dev(ROOT_PORT, "8086:1901", "060400", 1, driver="pcieport"),
        dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT, "nvidia"),
        dev(NVIDIA_AUDIO, "10de:10f8", "040300", 1, ROOT_PORT),
        dev(NVIDIA_USB, "10de:1ad8", "0c0330", 1, ROOT_PORT, "xhci_hcd"),
        dev(NVIDIA_UCSI, "10de:1ad9", "0c8000", 1, ROOT_PORT),
    ]
    nv = gpus_of(make_sysroot(pci=pci))[NVIDIA_GPU]
    assert nv["group_viable"] is True and nv["group_blockers"] == []


def test_without_iommu_there_is_no_verdict(make_sysroot):
    pci = [
        dev(ROOT_PORT, "8086:1901", "060400", 1, driver="pcieport"),
        dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT, "nvidia"),
        dev(NVIDIA_AUDIO, "10de:10f8", "040300", 1, ROOT_PORT),
        dev("0000:00:14.0", "8086:a36d", "0c0330", 1),
    ]
    nv = gpus_of(make_sysroot(pci=pci, iommu=None))[NVIDIA_GPU]
    assert nv["iommu_group"] is None
    assert nv["group_viable"] is None and nv["group_blockers"] == []
    assert nv["companions"] == [NVIDIA_AUDIO]  # still known without groups
    assert nv["slot_groups"] == []


def test_member_with_an_unreadable_group_link_still_blocks(make_sysroot):
    pci = [
        dev(ROOT_PORT, "8086:1901", "060400", 1, driver="pcieport"),
        dev(NVIDIA_GPU, "10de:1e87", "030000", 1, ROOT_PORT, "nvidia"),
        dev("0000:00:14.0", "8086:a36d", "0c0330", 1, driver="xhci_hcd"),
    ]
    root = make_sysroot(pci=pci)
    make_unreadable_dir(root, dev_file("0000:00:14.0", "iommu_group"))
    from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

    facts = gather_facts(str(root))
    group1 = next(g for g in facts["iommu_groups"] if g["id"] == 1)
    assert "0000:00:14.0" in group1["devices"]  # the kernel's own listing is intact
    nv = by_address(facts["gpus"])[NVIDIA_GPU]
    assert nv["group_viable"] is False
    assert nv["group_blockers"] == ["0000:00:14.0"]


# ---- identical cards ----------------------------------------------------------------------

def test_identical_cards(make_sysroot):
    pci = [
        dev("0000:00:01.0", "8086:1901", "060400", 1, driver="pcieport"),
        dev("0000:00:01.1", "8086:1905", "060400", 2, driver="pcieport"),
        dev("0000:00:1c.0", "8086:a338", "060400", 3, driver="pcieport"),
        dev("0000:01:00.0", "10de:2204", "030000", 1, "0000:00:01.0", "nvidia"),
        dev("0000:01:00.1", "10de:1aef", "040300", 1, "0000:00:01.0"),
        dev("0000:02:00.0", "10de:2204", "030000", 2, "0000:00:01.1", "vfio-pci"),
        dev("0000:02:00.1", "10de:1aef", "040300", 2, "0000:00:01.1", "vfio-pci"),
        dev("0000:03:00.0", "10de:1e87", "030000", 3, "0000:00:1c.0", "nvidia"),
    ]
    gpus = gpus_of(make_sysroot(pci=pci))
    assert gpus["0000:01:00.0"]["identical_to"] == ["0000:02:00.0"]
    assert gpus["0000:02:00.0"]["identical_to"] == ["0000:01:00.0"]
    assert gpus["0000:03:00.0"]["identical_to"] == []
    assert gpus["0000:02:00.0"]["driver"] == "vfio-pci"
    assert gpus["0000:01:00.0"]["companions"] == ["0000:01:00.1"]
    assert all(g["group_viable"] for g in gpus.values())


def test_amd_dummy_host_bridge_in_the_gpu_group_does_not_block(make_sysroot):
    """Ryzen 3000/5000 boards put a 'PCIe Dummy Host Bridge' (class 0600) in the GPU's group;
    vfio accepts it, so the card can be passed through."""
    pci = [
        dev("0000:00:03.0", "1022:1482", "060000", 15),
        dev("0000:00:03.1", "1022:1483", "060400", 15, driver="pcieport"),
        dev("0000:09:00.0", "1002:73bf", "030000", 15, "0000:00:03.1", "amdgpu"),
        dev("0000:09:00.1", "1002:ab28", "040300", 15, "0000:00:03.1", "snd_hda_intel"),
    ]
    gpu = gpus_of(make_sysroot(pci=pci))["0000:09:00.0"]
    assert gpu["group_viable"] is True and gpu["group_blockers"] == []
