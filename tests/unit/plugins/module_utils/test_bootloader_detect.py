"""Which bootloader boots the host, with evidence, for every layout the lab can build."""
from __future__ import annotations

import pytest

from helpers import ARCH_OS_RELEASE, FEDORA_OS_RELEASE, fs_of, remove, set_boot_entry, write

from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_detect import detect_bootloader, esp_mount
from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

PROXMOX_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n'
POP_OS_RELEASE = 'NAME="Pop!_OS"\nVERSION="22.04 LTS"\nID=pop\nID_LIKE="ubuntu debian"\n'


def bootloader_of(root):
    return gather_facts(str(root))["bootloader"]


# layout, os section, the bootloader's name, evidence that must be shown, the ESP
LAYOUTS = [
    ("grub", {}, "grub", ["/boot/grub/grub.cfg", "/etc/default/grub"], "/boot/efi"),
    ("grubby", {"os_release": FEDORA_OS_RELEASE, "kernel": "6.8.5-301.fc40.x86_64", "initramfs": "dracut"},
     "grubby", ["/usr/sbin/grubby", "/boot/grub2/grub.cfg"], "/boot/efi"),
    ("systemd-boot", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "initramfs": "mkinitcpio",
                      "esp": "/boot"},
     "systemd-boot", ["/boot/EFI/systemd/systemd-bootx64.efi", "/boot/loader/loader.conf"], "/boot"),
    ("systemd-boot", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "initramfs": "mkinitcpio",
                      "esp": "/efi"},
     "systemd-boot", ["/efi/EFI/systemd/systemd-bootx64.efi", "/efi/loader/loader.conf"], "/efi"),
    ("kernelstub", {"os_release": POP_OS_RELEASE, "kernel": "6.9.3-76060903-generic"},
     "kernelstub", ["/etc/kernelstub/configuration", "/usr/bin/kernelstub"], "/boot/efi"),
    ("refind", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "initramfs": "mkinitcpio"},
     "refind", ["/boot/efi/EFI/refind/refind_x64.efi", "/boot/refind_linux.conf"], "/boot/efi"),
    ("limine", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "initramfs": "mkinitcpio"},
     "limine", ["/boot/limine.conf"], "/boot/efi"),
    ("proxmox", {"os_release": PROXMOX_OS_RELEASE, "kernel": "6.8.12-4-pve"},
     "proxmox", ["/etc/kernel/proxmox-boot-uuids", "/usr/sbin/proxmox-boot-tool"], "/boot/efi"),
]


@pytest.mark.parametrize("layout,os_,name,evidence,esp", LAYOUTS,
                         ids=[f"{x[0]}-{x[4]}" for x in LAYOUTS])
def test_each_layout_is_recognised_with_its_evidence(make_sysroot, layout, os_, name, evidence, esp):
    root = make_sysroot(pci=[], os={"bootloader": layout, **os_})
    bl = bootloader_of(root)
    assert bl["name"] == name
    for e in evidence:
        assert e in bl["evidence"]
    assert all(e.startswith("/") for e in bl["evidence"])
    assert bl["esp"] == esp
    assert bl["candidates"][0]["name"] == name
    assert bl["efi_boot_entry"] is None


def test_kernelstub_also_lists_the_systemd_boot_it_drives(make_sysroot):
    bl = bootloader_of(make_sysroot(pci=[], os={"bootloader": "kernelstub", "os_release": POP_OS_RELEASE}))
    assert [c["name"] for c in bl["candidates"]] == ["kernelstub", "systemd-boot"]


def test_grub_in_bios_mode(make_sysroot):
    bl = bootloader_of(make_sysroot(pci=[], firmware={"uefi": False}))
    assert bl["name"] == "grub"
    assert "/boot/grub/grub.cfg" in bl["evidence"]
    assert bl["efi_boot_entry"] is None


def test_unknown_layout(make_sysroot):
    bl = bootloader_of(make_sysroot(pci=[], os={"bootloader": None}))
    assert bl["name"] is None
    assert bl["evidence"] == [] and bl["candidates"] == []


def test_nothing_at_all(tmp_path):
    bl = detect_bootloader(fs_of(tmp_path))
    assert bl["name"] is None and bl["evidence"] == [] and bl["esp"] is None


# ---- leftovers and the EFI boot entry --------------------------------------------------

def _leftover_grub(root):
    write(root, "boot/grub/grub.cfg", "### BEGIN /etc/grub.d/10_linux ###\nmenuentry 'Debian' {\n}\n")
    write(root, "etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    write(root, "boot/efi/EFI/debian/shimx64.efi", b"MZ")


def test_leftover_grub_next_to_systemd_boot(make_sysroot):
    root = make_sysroot(pci=[], os={"bootloader": "systemd-boot"})
    _leftover_grub(root)
    bl = bootloader_of(root)
    assert bl["name"] == "systemd-boot"
    assert "/boot/efi/EFI/systemd/systemd-bootx64.efi" in bl["evidence"]
    assert "/boot/grub/grub.cfg" not in bl["evidence"]
    assert {c["name"] for c in bl["candidates"]} == {"systemd-boot", "grub"}


def test_efi_boot_entry_picks_grub_over_a_leftover_systemd_boot(make_sysroot):
    root = make_sysroot(pci=[], os={"bootloader": "systemd-boot"})
    _leftover_grub(root)
    set_boot_entry(root, 0x0004, "debian", "\\EFI\\debian\\shimx64.efi")
    bl = bootloader_of(root)
    assert bl["name"] == "grub"
    assert bl["evidence"][0].startswith("EFI BootCurrent entry 'debian'")
    assert "shimx64.efi" in bl["evidence"][0]
    assert "/boot/grub/grub.cfg" in bl["evidence"]
    assert bl["efi_boot_entry"] == {"number": "0004", "description": "debian", "path": "\\EFI\\debian\\shimx64.efi"}


def test_efi_boot_entry_confirms_systemd_boot(make_sysroot):
    root = make_sysroot(pci=[], os={"bootloader": "systemd-boot"},
                        firmware={"boot_entry": {"description": "Linux Boot Manager",
                                                 "path": "\\EFI\\systemd\\systemd-bootx64.efi"}})
    _leftover_grub(root)
    bl = bootloader_of(root)
    assert bl["name"] == "systemd-boot"
    assert bl["evidence"][0].startswith("EFI BootCurrent entry 'Linux Boot Manager'")


@pytest.mark.parametrize("layout,os_,entry,name", [
    ("kernelstub", {"os_release": POP_OS_RELEASE}, ("Pop!_OS 22.04 LTS", "\\EFI\\SYSTEMD\\SYSTEMD-BOOTX64.EFI"),
     "kernelstub"),
    ("grubby", {"os_release": FEDORA_OS_RELEASE}, ("Fedora", "\\EFI\\fedora\\shimx64.efi"), "grubby"),
    ("proxmox", {"os_release": PROXMOX_OS_RELEASE}, ("Linux Boot Manager", "\\EFI\\systemd\\systemd-bootx64.efi"),
     "proxmox"),
    ("refind", {"os_release": ARCH_OS_RELEASE}, ("rEFInd Boot Manager", "\\EFI\\refind\\refind_x64.efi"), "refind"),
    ("limine", {"os_release": ARCH_OS_RELEASE}, ("Limine", "\\EFI\\BOOT\\BOOTX64.EFI"), "limine"),
])
def test_efi_boot_entry_and_the_tool_that_manages_the_loader(make_sysroot, layout, os_, entry, name):
    root = make_sysroot(pci=[], os={"bootloader": layout, **os_},
                        firmware={"boot_entry": {"description": entry[0], "path": entry[1]}})
    assert bootloader_of(root)["name"] == name


def test_fallback_boot_path_names_no_loader(make_sysroot):
    # \EFI\BOOT\BOOTX64.EFI could be anything: the files decide
    root = make_sysroot(pci=[], os={"bootloader": "systemd-boot"},
                        firmware={"boot_entry": {"description": "UEFI OS", "path": "\\EFI\\BOOT\\BOOTX64.EFI"}})
    _leftover_grub(root)
    bl = bootloader_of(root)
    assert bl["name"] == "systemd-boot"
    assert not any(e.startswith("EFI BootCurrent") for e in bl["evidence"])


def test_efi_entry_given_directly():
    from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

    bl = detect_bootloader(RootFS("/nonexistent-root-of-unit-test"),
                           {"number": "0000", "description": "ubuntu", "path": "\\EFI\\ubuntu\\grubx64.efi"})
    assert bl["name"] == "grub"
    assert bl["evidence"] == ["EFI BootCurrent entry 'ubuntu' -> \\EFI\\ubuntu\\grubx64.efi"]


# ---- the ESP ---------------------------------------------------------------------------

def test_esp_from_proc_mounts(tmp_path):
    write(tmp_path, "proc/mounts", "/dev/sda2 / ext4 rw 0 0\n/dev/sda1 /efi vfat rw,relatime 0 0\n")
    assert esp_mount(fs_of(tmp_path)) == "/efi"


def test_esp_with_a_space_in_the_mount_point(tmp_path):
    write(tmp_path, "proc/mounts", "/dev/sda1 /mnt/my\\040esp vfat rw 0 0\n")
    assert esp_mount(fs_of(tmp_path)) == "/mnt/my esp"


def test_esp_without_proc_mounts(make_sysroot):
    # a chroot: /proc not mounted, the ESP directory is still there
    root = make_sysroot(pci=[], os={"bootloader": "systemd-boot", "esp": "/efi"})
    remove(root, "proc/mounts")
    bl = bootloader_of(root)
    assert bl["esp"] == "/efi"
    assert bl["name"] == "systemd-boot"


def test_grub2_without_bls_is_grub(tmp_path):
    # openSUSE: /boot/grub2/grub.cfg written by grub2-mkconfig, no BLS
    write(tmp_path, "boot/grub2/grub.cfg", "### BEGIN /etc/grub.d/10_linux ###\nmenuentry 'openSUSE' {\n}\n")
    write(tmp_path, "usr/sbin/grub2-mkconfig", "#!/bin/sh\n", 0o755)
    write(tmp_path, "etc/default/grub", "GRUB_DEFAULT=saved\n")
    bl = detect_bootloader(fs_of(tmp_path))
    assert bl["name"] == "grub"
    assert bl["evidence"] == ["/boot/grub2/grub.cfg", "/etc/default/grub", "/usr/sbin/grub2-mkconfig"]


def test_bls_grub_without_grubby_is_grub(make_sysroot):
    root = make_sysroot(pci=[], os={"bootloader": "grubby", "os_release": FEDORA_OS_RELEASE})
    remove(root, "usr/sbin/grubby")
    bl = bootloader_of(root)
    assert bl["name"] == "grub"
    assert "/boot/grub2/grub.cfg" in bl["evidence"]
