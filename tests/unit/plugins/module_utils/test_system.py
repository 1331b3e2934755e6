"""Distribution, kernels, CPU, firmware boot mode, Secure Boot, chassis and the EFI boot entry."""
from __future__ import annotations

import struct

import pytest

from helpers import (
    ARCH_OS_RELEASE, GUID, SECURE_BOOT, TINY_PCI, config_gz, efi_var, fs_of, make_dangling, make_unreadable_dir,
    remove, set_boot_entry, symlink, write,
)

from ansible_collections.exliar.vfio.plugins.module_utils import _system as system


# ---- os-release -------------------------------------------------------------------------

def test_parse_os_release_quoting_and_comments():
    text = (
        "# written by the distribution\n"
        'NAME="Debian GNU/Linux"\n'
        "ID=debian\n"
        "\n"
        "VERSION_ID='12'\n"
        'PRETTY_NAME="Ubuntu 24.04.1 LTS \\"Noble\\""\n'
        "   # indented comment\n"
        'ID_LIKE="rhel centos fedora"\n'
        "VARIANT=\n"
        "not a key value line\n"
    )
    v = system.parse_os_release(text)
    assert v["NAME"] == "Debian GNU/Linux"
    assert v["ID"] == "debian"
    assert v["VERSION_ID"] == "12"
    assert v["PRETTY_NAME"] == 'Ubuntu 24.04.1 LTS "Noble"'
    assert v["ID_LIKE"] == "rhel centos fedora"
    assert v["VARIANT"] == ""
    assert "# written by the distribution" not in v and "not a key value line" not in v


def test_parse_os_release_unbalanced_quote_does_not_raise():
    assert system.parse_os_release('NAME="Broken\nID=x\n') == {"NAME": "Broken", "ID": "x"}


def test_distribution_from_etc(tmp_path):
    write(tmp_path, "etc/os-release",
          'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n'
          "ID=ubuntu\nID_LIKE=debian\n")
    fs = fs_of(tmp_path)
    assert system.distribution(fs) == {
        "id": "ubuntu", "id_like": ["debian"], "name": "Ubuntu", "pretty_name": "Ubuntu 24.04.1 LTS",
        "version_id": "24.04", "codename": "noble", "family": "debian"}
    assert fs.warnings == []


def test_distribution_falls_back_to_usr_lib(tmp_path):
    write(tmp_path, "usr/lib/os-release", ARCH_OS_RELEASE)
    fs = fs_of(tmp_path)
    d = system.distribution(fs)
    assert d["id"] == "arch" and d["family"] == "arch" and d["version_id"] is None
    assert fs.warnings == []


def test_distribution_through_the_relative_link_of_a_sysroot(make_sysroot):
    root = make_sysroot(pci=[])
    assert (root / "etc/os-release").is_symlink()
    d = system.distribution(fs_of(root))
    assert d["id"] == "debian" and d["version_id"] == "12" and d["codename"] == "bookworm"
    assert d["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"


def test_missing_os_release_is_a_warning_and_nulls(tmp_path):
    fs = fs_of(tmp_path)
    d = system.distribution(fs)
    assert d == {"id": None, "id_like": [], "name": None, "pretty_name": None, "version_id": None,
                 "codename": None, "family": None}
    assert len(fs.warnings) == 1 and "os-release" in fs.warnings[0]


def test_dangling_os_release_link_is_a_warning(tmp_path):
    make_dangling(tmp_path, "etc/os-release")
    fs = fs_of(tmp_path)
    assert system.distribution(fs)["id"] is None
    assert any("os-release" in w for w in fs.warnings)


@pytest.mark.parametrize("os_id,like,family", [
    ("debian", "", "debian"),
    ("ubuntu", "debian", "debian"),
    ("pop", "ubuntu debian", "debian"),
    ("linuxmint", "ubuntu debian", "debian"),
    ("fedora", "", "redhat"),
    ("rocky", "rhel centos fedora", "redhat"),
    ("almalinux", "rhel centos fedora", "redhat"),
    ("arch", "", "arch"),
    ("endeavouros", "arch", "arch"),
    ("manjaro", "arch", "arch"),
    ("opensuse-tumbleweed", "opensuse suse", "suse"),
    ("opensuse-leap", "suse opensuse", "suse"),
    ("sles", "suse", "suse"),
    ("nixos", "", None),
    ("gentoo", "", None),
])
def test_family(tmp_path, os_id, like, family):
    write(tmp_path, "etc/os-release", f"ID={os_id}\nID_LIKE=\"{like}\"\n")
    assert system.distribution(fs_of(tmp_path))["family"] == family


# ---- kernels ----------------------------------------------------------------------------

def _kernel_dir(root, base, k, how="dep"):
    if how == "dep":
        write(root, f"{base}/{k}/modules.dep", "kernel/drivers/vfio/vfio.ko:\n")
    else:
        write(root, f"{base}/{k}/kernel/drivers/vfio/vfio.ko", b"\x7fELF")


def test_several_installed_kernels_in_version_order(make_sysroot):
    kernels = ["6.10.0-1-amd64", "6.1.0-18-amd64", "6.1.0-9-amd64", "5.10.0-28-amd64"]
    root = make_sysroot(pci=[], os={"kernel": "6.1.0-18-amd64", "kernels": kernels})
    k = system.kernel(fs_of(root))
    assert k["running"] == "6.1.0-18-amd64"
    assert k["installed"] == ["5.10.0-28-amd64", "6.1.0-9-amd64", "6.1.0-18-amd64", "6.10.0-1-amd64"]


def test_kernels_in_lib_and_usr_lib_without_usr_merge(tmp_path):
    _kernel_dir(tmp_path, "lib/modules", "5.15.0-91-generic")
    _kernel_dir(tmp_path, "usr/lib/modules", "6.8.0-45-generic", how="tree")
    assert system.installed_kernels(fs_of(tmp_path)) == ["5.15.0-91-generic", "6.8.0-45-generic"]


def test_a_kernel_in_both_places_is_listed_once(make_sysroot):
    root = make_sysroot(pci=[])  # /lib -> usr/lib
    assert system.installed_kernels(fs_of(root)) == ["6.1.0-18-amd64"]


def test_leftover_module_directories_are_not_kernels(tmp_path):
    _kernel_dir(tmp_path, "lib/modules", "6.1.0-18-amd64")
    write(tmp_path, "lib/modules/6.1.0-15-amd64/updates/dkms/nvidia.ko", b"\x7fELF")  # removed kernel, DKMS left over
    (tmp_path / "lib/modules/6.1.0-10-amd64").mkdir(parents=True)
    assert system.installed_kernels(fs_of(tmp_path)) == ["6.1.0-18-amd64"]


def test_running_kernel_unknown(tmp_path):
    fs = fs_of(tmp_path)
    assert system.kernel(fs) == {"running": None, "installed": []}
    assert "proc/sys/kernel/osrelease: missing" in fs.warnings


@pytest.mark.parametrize("k,want", [("6.1.0-18-amd64", (6, 1)), ("6.10.3-arch1-1", (6, 10)),
                                    ("5.15.0-91-generic", (5, 15)), ("garbage", (0, 0)), (None, (0, 0))])
def test_kernel_version_tuple(k, want):
    assert system.kernel_version_tuple(k) == want


# ---- kernel config ----------------------------------------------------------------------

def test_kernel_config_from_boot(tmp_path):
    write(tmp_path, "boot/config-6.1.0-18-amd64",
          "#\n# Automatically generated file; DO NOT EDIT.\nCONFIG_INTEL_IOMMU=y\n"
          "# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set\nCONFIG_CMDLINE=\"quiet splash\"\n")
    cfg = system.kernel_config(fs_of(tmp_path), "6.1.0-18-amd64")
    assert cfg["CONFIG_INTEL_IOMMU"] == "y"
    assert cfg["CONFIG_INTEL_IOMMU_DEFAULT_ON"] == "n"
    assert cfg["CONFIG_CMDLINE"] == "quiet splash"


def test_kernel_config_from_the_modules_directory(tmp_path):
    # Arch ships no /boot/config-*, but /usr/lib/modules/<k>/config
    write(tmp_path, "usr/lib/modules/6.10.3-arch1-1/config", "CONFIG_INTEL_IOMMU_DEFAULT_ON=y\n")
    assert system.kernel_config(fs_of(tmp_path), "6.10.3-arch1-1")["CONFIG_INTEL_IOMMU_DEFAULT_ON"] == "y"


def test_kernel_config_from_proc_only_for_the_running_kernel(tmp_path):
    write(tmp_path, "proc/sys/kernel/osrelease", "6.6.30\n")
    write(tmp_path, "proc/config.gz", config_gz("CONFIG_INTEL_IOMMU_DEFAULT_ON=y\n"))
    fs = fs_of(tmp_path)
    assert system.kernel_config(fs, "6.6.30")["CONFIG_INTEL_IOMMU_DEFAULT_ON"] == "y"
    assert system.kernel_config(fs, "6.6.29") == {}


def test_kernel_config_not_gzip(tmp_path):
    write(tmp_path, "proc/sys/kernel/osrelease", "6.6.30\n")
    write(tmp_path, "proc/config.gz", b"CONFIG_X=y\n")
    fs = fs_of(tmp_path)
    assert system.kernel_config(fs, "6.6.30") == {}
    assert any("proc/config.gz" in w for w in fs.warnings)


def test_kernel_config_truncated_gzip(tmp_path):
    write(tmp_path, "proc/sys/kernel/osrelease", "6.6.30\n")
    write(tmp_path, "proc/config.gz", config_gz("CONFIG_INTEL_IOMMU_DEFAULT_ON=y\n" * 50)[:30])
    fs = fs_of(tmp_path)
    assert system.kernel_config(fs, "6.6.30") == {}
    assert any("proc/config.gz" in w for w in fs.warnings)


def test_kernel_config_corrupt_gzip_is_a_warning(tmp_path):
    good = config_gz("CONFIG_INTEL_IOMMU=y\n" * 100)
    bad = good[:10] + b"\xff" * 16 + good[-8:]  # gzip header, a deflate block of the reserved type, trailer
    write(tmp_path, "proc/sys/kernel/osrelease", "6.6.30\n")
    write(tmp_path, "proc/config.gz", bad)
    fs = fs_of(tmp_path)
    assert system.kernel_config(fs, "6.6.30") == {}
    assert any("proc/config.gz" in w for w in fs.warnings)


# ---- CPU --------------------------------------------------------------------------------

def _cpuinfo(vendor, flags, threads=2, model="Some CPU"):
    return "".join(
        f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: 25\nmodel name\t: {model}\n"
        f"flags\t\t: {' '.join(flags)}\n\n" for i in range(threads))


@pytest.mark.parametrize("vendor_id,flags,vendor,flag", [
    ("GenuineIntel", ["fpu", "vmx", "ept"], "intel", "vmx"),
    ("AuthenticAMD", ["fpu", "svm", "npt"], "amd", "svm"),
    ("HygonGenuine", ["fpu", "svm"], "amd", "svm"),
    ("GenuineIntel", ["fpu", "sse2"], "intel", None),  # VT-x off in firmware: no vmx flag
    ("CentaurHauls", ["fpu"], "other", None),
])
def test_cpu_vendor_and_virtualization(tmp_path, vendor_id, flags, vendor, flag):
    write(tmp_path, "proc/cpuinfo", _cpuinfo(vendor_id, flags, threads=4, model="AMD Ryzen 9 5950X 16-Core Processor"))
    c = system.cpu(fs_of(tmp_path))
    assert c["vendor"] == vendor
    assert c["vendor_id"] == vendor_id
    assert c["virtualization_flag"] == flag
    assert c["virtualization_enabled"] is (flag is not None)
    assert c["threads"] == 4
    assert c["model_name"] == "AMD Ryzen 9 5950X 16-Core Processor"


def test_cpu_in_a_virtual_machine(tmp_path):
    write(tmp_path, "proc/cpuinfo", _cpuinfo("GenuineIntel", ["fpu", "vmx", "hypervisor"]))
    assert system.cpu(fs_of(tmp_path))["hypervisor"] is True


def test_cpu_unknown_without_cpuinfo(tmp_path):
    fs = fs_of(tmp_path)
    c = system.cpu(fs)
    assert c["vendor"] is None and c["virtualization_flag"] is None and c["virtualization_enabled"] is False
    assert c["threads"] is None
    assert "proc/cpuinfo: missing" in fs.warnings


def test_cpu_from_a_sysroot(make_sysroot):
    root = make_sysroot(pci=[], cpu={"vendor_id": "AuthenticAMD", "model_name": "AMD Ryzen 7 7800X3D", "threads": 3,
                                     "flags": ["fpu", "svm"]})
    c = system.cpu(fs_of(root))
    assert (c["vendor"], c["virtualization_flag"], c["threads"]) == ("amd", "svm", 3)


# ---- boot mode and Secure Boot ----------------------------------------------------------

@pytest.mark.parametrize("content,want", [
    (b"\x06\x00\x00\x00\x01", True),
    (b"\x06\x00\x00\x00\x00", False),
    (b"\x16\x00\x00\x00\x01", True),
])
def test_secure_boot(tmp_path, content, want):
    write(tmp_path, SECURE_BOOT, content)
    fs = fs_of(tmp_path)
    assert system.boot(fs) == {"mode": "uefi", "secure_boot": want}
    assert fs.warnings == []


def test_secure_boot_variable_of_the_wrong_size(tmp_path):
    write(tmp_path, SECURE_BOOT, b"\x06\x00\x00\x00")
    fs = fs_of(tmp_path)
    assert system.boot(fs) == {"mode": "uefi", "secure_boot": None}
    assert len(fs.warnings) == 1 and "SecureBoot" in fs.warnings[0]


def test_secure_boot_unknown_without_the_variable(tmp_path):
    (tmp_path / "sys/firmware/efi/efivars").mkdir(parents=True)
    assert system.boot(fs_of(tmp_path)) == {"mode": "uefi", "secure_boot": None}


def test_secure_boot_variable_unreadable(tmp_path):
    make_unreadable_dir(tmp_path, SECURE_BOOT)
    fs = fs_of(tmp_path)
    assert system.boot(fs)["secure_boot"] is None
    assert any("SecureBoot" in w for w in fs.warnings)


def test_bios_boot(tmp_path):
    (tmp_path / "sys/firmware/acpi").mkdir(parents=True)
    assert system.boot(fs_of(tmp_path)) == {"mode": "bios", "secure_boot": False}


@pytest.mark.parametrize("firmware,want", [
    ({"uefi": True, "secure_boot": True}, {"mode": "uefi", "secure_boot": True}),
    ({"uefi": True, "secure_boot": False}, {"mode": "uefi", "secure_boot": False}),
    ({"uefi": False}, {"mode": "bios", "secure_boot": False}),
])
def test_boot_of_a_sysroot(make_sysroot, firmware, want):
    assert system.boot(fs_of(make_sysroot(pci=[], firmware=firmware))) == want


# ---- chassis ----------------------------------------------------------------------------

@pytest.mark.parametrize("chassis,laptop", [(3, False), (4, False), (9, True), (10, True), (14, True),
                                            (17, False), (23, False), (31, True)])
def test_laptop_from_chassis_type(tmp_path, chassis, laptop):
    write(tmp_path, "sys/class/dmi/id/chassis_type", f"{chassis}\n")
    write(tmp_path, "sys/class/dmi/id/sys_vendor", "LENOVO\n")
    write(tmp_path, "sys/class/dmi/id/product_name", "21CB\n")
    m = system.machine(fs_of(tmp_path))
    assert m == {"vendor": "LENOVO", "product": "21CB", "chassis_type": chassis, "laptop": laptop}


def test_laptop_through_the_dmi_class_link(make_sysroot):
    root = make_sysroot(pci=[], machine={"sys_vendor": "Dell Inc.", "product_name": "XPS 15 9510", "chassis_type": 10})
    assert system.machine(fs_of(root)) == {"vendor": "Dell Inc.", "product": "XPS 15 9510", "chassis_type": 10,
                                           "laptop": True}


def test_chassis_garbage(tmp_path):
    write(tmp_path, "sys/class/dmi/id/chassis_type", "Notebook\n")
    fs = fs_of(tmp_path)
    m = system.machine(fs)
    assert m["chassis_type"] is None and m["laptop"] is None
    assert any("chassis_type" in w for w in fs.warnings)


def test_chassis_unknown_without_dmi(tmp_path):
    fs = fs_of(tmp_path)
    assert system.machine(fs) == {"vendor": None, "product": None, "chassis_type": None, "laptop": None}
    assert fs.warnings == []


# ---- EFI BootCurrent --------------------------------------------------------------------

def test_boot_current_as_the_sysroot_writes_it(make_sysroot):
    entry = {"description": "debian", "path": "\\EFI\\debian\\shimx64.efi"}
    root = make_sysroot(pci=[], firmware={"boot_entry": entry})
    assert system.efi_boot_current(fs_of(root)) == {
        "number": "0001", "description": "debian", "path": "\\EFI\\debian\\shimx64.efi"}


def test_boot_current_with_a_hard_drive_node_and_hex_entry_number(tmp_path):
    # efibootmgr -v: Boot000A* Linux Boot Manager  HD(1,GPT,...)/File(\EFI\systemd\systemd-bootx64.efi)
    set_boot_entry(tmp_path, 0x000A, "Linux Boot Manager", "\\EFI\\systemd\\systemd-bootx64.efi",
                   optional=b"\x01\x02\x03\x04")
    assert system.efi_boot_current(fs_of(tmp_path)) == {
        "number": "000A", "description": "Linux Boot Manager", "path": "\\EFI\\systemd\\systemd-bootx64.efi"}


def test_boot_current_entry_without_a_file_node(tmp_path):
    # a firmware application entry (e.g. "UEFI Shell") has no File() node
    ev = "sys/firmware/efi/efivars"
    write(tmp_path, f"{ev}/BootCurrent-{GUID}", efi_var(struct.pack("<H", 3), 6))
    desc = "UEFI: Built-in EFI Shell".encode("utf-16-le") + b"\x00\x00"
    fp = bytes([0x7F, 0xFF, 4, 0])
    write(tmp_path, f"{ev}/Boot0003-{GUID}", efi_var(struct.pack("<IH", 1, len(fp)) + desc + fp))
    assert system.efi_boot_current(fs_of(tmp_path)) == {
        "number": "0003", "description": "UEFI: Built-in EFI Shell", "path": None}


@pytest.mark.parametrize("current,entry", [
    (None, None),                                        # no BootCurrent at all
    (efi_var(b"\x01", 6), None),                         # truncated BootCurrent
    (efi_var(struct.pack("<H", 1), 6), None),            # BootCurrent names a missing entry
    (efi_var(struct.pack("<H", 1), 6), efi_var(b"\x01\x00")),  # truncated Boot0001
])
def test_boot_current_unusable(tmp_path, current, entry):
    ev = "sys/firmware/efi/efivars"
    if current is not None:
        write(tmp_path, f"{ev}/BootCurrent-{GUID}", current)
    if entry is not None:
        write(tmp_path, f"{ev}/Boot0001-{GUID}", entry)
    assert system.efi_boot_current(fs_of(tmp_path)) is None


def test_boot_current_garbage_entry_does_not_raise(tmp_path):
    ev = "sys/firmware/efi/efivars"
    write(tmp_path, f"{ev}/BootCurrent-{GUID}", efi_var(struct.pack("<H", 1), 6))
    write(tmp_path, f"{ev}/Boot0001-{GUID}", efi_var(b"\x01\x00\x00\x00\xff\xff" + b"A\x00" * 5 + b"\x04\x04\xff"))
    result = system.efi_boot_current(fs_of(tmp_path))
    assert result is None or result["number"] == "0001"


def test_tiny_desktop_reads_everything_without_warnings(make_sysroot):
    root = make_sysroot(pci=TINY_PCI)
    fs = fs_of(root)
    system.distribution(fs), system.kernel(fs), system.cpu(fs), system.boot(fs), system.machine(fs)
    assert fs.warnings == []


def test_usr_lib_os_release_when_etc_link_removed(make_sysroot):
    root = make_sysroot(pci=[])
    remove(root, "etc/os-release")
    symlink(root, "etc/os-release.bak", "../usr/lib/os-release")
    fs = fs_of(root)
    assert system.distribution(fs)["id"] == "debian"
    assert fs.warnings == []
