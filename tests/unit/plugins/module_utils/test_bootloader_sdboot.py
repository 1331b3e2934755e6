"""systemd-boot over the ArchWiki layout and a kernel-install/XBOOTLDR layout (data/bootloaders/,
sources in its README): the options of every type #1 entry (several options lines too) and
/etc/kernel/cmdline edited, created when absent; other words and lines untouched, idempotence;
systemd-boot's default pattern, sort order and boot counting for the read-back; unified kernel
images refused instead of pretending."""
from __future__ import annotations

import struct

import pytest

from helpers import applied, BOOTLOADER_DATA as DATA, load

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as cfg
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_sdboot as sdboot
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

ARCH = {"esp": "/boot"}
KI = {"esp": "/efi"}
ARCH_OPTS = "root=UUID=0a3407de-014b-458b-b5c1-848e92a327a3 rw"
MID = "6a9857a393724b7a981ebb5b8495b9ea"
KI_OPTS = f"root=UUID=5d0f7e23-9ac9-4a7d-8f2e-1d8b6c3f4e51 rw systemd.machine_id={MID}"
ENTRIES = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                       {"name": "quiet", "state": "absent"}, {"name": "nvidia-drm.modeset", "value": "0"}])
ADDED = "intel_iommu=on iommu=pt nvidia-drm.modeset=0"


def content(result: dict, path: str) -> str:
    assert not result["errors"], result["errors"]
    return result["files"][path]["content"]


def pe_image(sections: dict) -> str:
    """A minimal PE file with the given sections, as the stage reads it (text, surrogateescape)."""
    names = list(sections)
    table = 0x40 + 24
    data_at = table + 40 * len(names)
    head = bytearray(b"MZ" + b"\0" * 0x3a + struct.pack("<I", 0x40))
    head += b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, len(names), 0, 0, 0, 0, 0x22)
    body = b""
    for name in names:
        raw = sections[name]
        head += name.encode().ljust(8, b"\0") + struct.pack("<IIII", len(raw), 0x1000, len(raw), data_at + len(body)) + b"\0" * 16
        body += raw
    return (bytes(head) + body + b"\x90\xff\xfe").decode("utf-8", "surrogateescape")


UKI = pe_image({".osrel": b'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n',
                ".cmdline": b"root=UUID=0a3407de-014b-458b-b5c1-848e92a327a3 rw quiet\n\0", ".linux": b"\x7fkernel"})


# ---- data and registration --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["arch-systemd-boot", "arch-kernel-install-xbootldr"])
def test_each_layout_is_cited_in_the_readme(layout):
    assert f"`{layout}/`" in (DATA / "README.md").read_text(encoding="utf-8")
    assert (DATA / layout).is_dir()


def test_the_stage_finds_the_module_under_systemd_boot():
    assert cfg.loader("systemd-boot") is sdboot


def test_inputs_cover_esp_and_xbootldr():
    assert sdboot.inputs(KI) == ["/efi/loader/loader.conf", "/efi/loader/entries/*.conf", "/efi/EFI/Linux/*.efi",
                                 "/boot/loader/entries/*.conf", "/boot/EFI/Linux/*.efi", "/etc/kernel/cmdline",
                                 "/usr/lib/kernel/cmdline"]
    assert sdboot.inputs(ARCH)[:3] == ["/boot/loader/loader.conf", "/boot/loader/entries/*.conf", "/boot/EFI/Linux/*.efi"]


# ---- ArchWiki layout -------------------------------------------------------------------------------------
def test_arch_every_entry_gets_the_words_and_nothing_else_changes():
    files = load("arch-systemd-boot")
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["errors"] == [] and res["commands"] == []
    for name in ("arch.conf", "arch-fallback.conf"):
        path = f"/boot/loader/entries/{name}"
        assert content(res, path) == files[path].replace(f"options {ARCH_OPTS}\n", f"options {ARCH_OPTS} {ADDED}\n")
    assert "/boot/loader/loader.conf" not in res["files"]
    assert res["config_path"] == "/boot/loader/entries/arch.conf"


def test_arch_missing_kernel_cmdline_is_created_from_the_default_entry():
    res = sdboot.plan(load("arch-systemd-boot"), ENTRIES, ARCH)
    assert res["files"]["/etc/kernel/cmdline"] == {"content": f"{ARCH_OPTS} {ADDED}\n", "mode": 0o644}
    assert res["warnings"] == ["/etc/kernel/cmdline did not exist: kernel-install would have taken the next kernel's options "
                               "from /proc/cmdline; it was created so that new kernels keep these parameters"]


def test_missing_kernel_cmdline_starts_from_usr_lib_kernel_cmdline_when_there_is_one():
    files = load("arch-systemd-boot")
    files["/usr/lib/kernel/cmdline"] = "root=LABEL=arch rw quiet\n"
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["files"]["/etc/kernel/cmdline"]["content"] == f"root=LABEL=arch rw {ADDED}\n"
    assert "from /usr/lib/kernel/cmdline" in res["warnings"][0]


@pytest.mark.parametrize("layout,ctx", [("arch-systemd-boot", ARCH), ("arch-kernel-install-xbootldr", KI)])
def test_planning_the_planned_files_again_changes_nothing(layout, ctx):
    files = load(layout)
    first = sdboot.plan(files, ENTRIES, ctx)
    assert first["files"] and not first["errors"]
    second = sdboot.plan(applied(files, first), ENTRIES, ctx)
    assert second["files"] == {} and second["errors"] == []


def test_arch_read_back_after_the_plan_has_every_parameter():
    files = load("arch-systemd-boot")
    nb = sdboot.next_boot(applied(files, sdboot.plan(files, ENTRIES, ARCH)), ARCH)
    assert nb["source"] == "/boot/loader/entries/arch.conf" and nb["default"] == "arch.conf"
    assert nb["cmdline"] == f"{ARCH_OPTS} {ADDED}" and kp.missing(nb["cmdline"], ENTRIES) == []
    assert [e["source"] for e in nb["entries"]] == ["/boot/loader/entries/arch.conf", "/boot/loader/entries/arch-fallback.conf"]
    assert nb["errors"] == []


@pytest.mark.parametrize("default,expected", [
    ("arch-fallback.conf", "arch-fallback.conf"),
    ("ARCH-FALLBACK.conf", "arch-fallback.conf"),   # ids and pattern are case-folded
    ("arch-*", "arch-fallback.conf"),               # 'arch.conf' does not match arch-*
    ("*", "arch.conf"),                             # the first match in menu order
    ("arch", "arch.conf"),                          # matches nothing: the first entry
])
def test_loader_conf_default_is_a_glob_over_entry_ids(default, expected):
    files = load("arch-systemd-boot")
    files["/boot/loader/loader.conf"] = files["/boot/loader/loader.conf"].replace("default  arch.conf", f"default  {default}")
    nb = sdboot.next_boot(files, ARCH)
    assert nb["source"] == f"/boot/loader/entries/{expected}"


def test_default_saved_is_reported_as_unknowable():
    files = load("arch-systemd-boot")
    files["/boot/loader/loader.conf"] = files["/boot/loader/loader.conf"].replace("default  arch.conf", "default @saved")
    nb = sdboot.next_boot(files, ARCH)
    assert nb["source"] == "/boot/loader/entries/arch.conf"
    assert "loader.conf says 'default @saved': systemd-boot boots the entry booted last (EFI variable LoaderEntryLastBooted); " \
           "assumed to be the first entry" in nb["warnings"]


def test_boot_counting_suffix_is_not_part_of_the_id_and_spent_entries_go_last():
    files = load("arch-systemd-boot")
    files["/boot/loader/entries/arch+0-3.conf"] = files.pop("/boot/loader/entries/arch.conf")
    files["/boot/loader/loader.conf"] = "timeout 3\n"
    nb = sdboot.next_boot(files, ARCH)
    assert [e["source"] for e in nb["entries"]] == ["/boot/loader/entries/arch-fallback.conf", "/boot/loader/entries/arch+0-3.conf"]
    files["/boot/loader/loader.conf"] = "default arch.conf\n"
    assert sdboot.next_boot(files, ARCH)["source"] == "/boot/loader/entries/arch+0-3.conf"


def test_several_options_lines_are_edited_where_the_words_are():
    files = load("arch-systemd-boot")
    path = "/boot/loader/entries/arch.conf"
    files[path] = files[path].replace(f"options {ARCH_OPTS}\n", f"options {ARCH_OPTS} quiet\noptions  nvidia-drm.modeset=1 splash\n")
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert content(res, path) == files[path].replace(
        f"options {ARCH_OPTS} quiet\noptions  nvidia-drm.modeset=1 splash\n",
        f"options {ARCH_OPTS}\noptions  nvidia-drm.modeset=0 splash intel_iommu=on iommu=pt\n")
    nb = sdboot.next_boot(applied(files, res), ARCH)
    assert nb["cmdline"] == f"{ARCH_OPTS} nvidia-drm.modeset=0 splash intel_iommu=on iommu=pt"


def test_entry_without_options_gets_an_options_line():
    files = load("arch-systemd-boot")
    path = "/boot/loader/entries/arch-fallback.conf"
    files[path] = files[path].replace(f"options {ARCH_OPTS}\n", "")
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert content(res, path) == files[path] + f"options {ADDED}\n"


def test_crlf_and_comments_are_kept():
    files = load("arch-systemd-boot")
    path = "/boot/loader/entries/arch.conf"
    files[path] = "# my entry\r\n" + files[path].replace("\n", "\r\n")
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert content(res, path) == files[path].replace(f"options {ARCH_OPTS}\r\n", f"options {ARCH_OPTS} {ADDED}\r\n")


# ---- kernel-install layout: ESP on /efi, entries on the XBOOTLDR /boot --------------------------------
def test_xbootldr_entries_are_edited_and_the_kernel_cmdline_too():
    files = load("arch-kernel-install-xbootldr")
    res = sdboot.plan(files, ENTRIES, KI)
    for ver in ("6.10.3-arch1-1", "6.9.12-arch1-1"):
        path = f"/boot/loader/entries/{MID}-{ver}.conf"
        assert content(res, path) == files[path].replace(f"options    {KI_OPTS}\n", f"options    {KI_OPTS} {ADDED}\n")
    assert content(res, "/etc/kernel/cmdline") == f"root=UUID=5d0f7e23-9ac9-4a7d-8f2e-1d8b6c3f4e51 rw {ADDED}\n"
    assert sorted(res["files"]) == ["/boot/loader/entries/6a9857a393724b7a981ebb5b8495b9ea-6.10.3-arch1-1.conf",
                                    "/boot/loader/entries/6a9857a393724b7a981ebb5b8495b9ea-6.9.12-arch1-1.conf",
                                    "/etc/kernel/cmdline"]


def test_xbootldr_without_default_boots_the_newest_version_of_the_sort_key():
    nb = sdboot.next_boot(load("arch-kernel-install-xbootldr"), KI)
    assert nb["default"] is None
    assert [e["source"].rsplit("-", 3)[-3] for e in nb["entries"]] == ["6.10.3", "6.9.12"]
    assert nb["source"] == f"/boot/loader/entries/{MID}-6.10.3-arch1-1.conf" and nb["cmdline"] == KI_OPTS


def test_multi_line_kernel_cmdline_keeps_its_lines():
    files = load("arch-kernel-install-xbootldr")
    files["/etc/kernel/cmdline"] = "root=UUID=5d0f rw\nquiet nvidia-drm.modeset=1\n\n"
    res = sdboot.plan(files, ENTRIES, KI)
    assert content(res, "/etc/kernel/cmdline") == "root=UUID=5d0f rw\nnvidia-drm.modeset=0 intel_iommu=on iommu=pt\n\n"


# ---- unified kernel images ------------------------------------------------------------------------------
def test_default_uki_is_refused_and_nothing_is_written():
    files = load("arch-systemd-boot")
    files["/boot/EFI/Linux/arch-linux.efi"] = UKI
    files["/boot/loader/loader.conf"] = "timeout 3\n"   # no default: the UKI (it has a sort key) comes first
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["files"] == {}
    assert res["errors"] == [
        "the default boot entry /boot/EFI/Linux/arch-linux.efi is a unified kernel image: its command line is built into "
        "the signed image and loader entry options do not change it; edit /etc/kernel/cmdline and rebuild the UKI with your "
        "tool (kernel-install, ukify, mkinitcpio, dracut --uefi), or make a type #1 entry the default"]
    nb = sdboot.next_boot(files, ARCH)
    assert nb["source"] == "/boot/EFI/Linux/arch-linux.efi"
    assert nb["cmdline"] == "root=UUID=0a3407de-014b-458b-b5c1-848e92a327a3 rw quiet"
    assert nb["errors"] == res["errors"]


def test_uki_that_is_not_the_default_is_listed_with_its_embedded_cmdline():
    files = load("arch-systemd-boot")
    files["/boot/EFI/Linux/arch-linux.efi"] = UKI
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["errors"] == [] and "/boot/loader/entries/arch.conf" in res["files"]
    nb = sdboot.next_boot(applied(files, res), ARCH)
    assert nb["source"] == "/boot/loader/entries/arch.conf"
    assert nb["entries"][0] == {"title": "Arch Linux", "cmdline": "root=UUID=0a3407de-014b-458b-b5c1-848e92a327a3 rw quiet",
                                "source": "/boot/EFI/Linux/arch-linux.efi"}


def test_type1_entry_with_uki_line_as_default_is_refused():
    files = load("arch-systemd-boot")
    path = "/boot/loader/entries/arch.conf"
    files[path] = "title Arch UKI\nuki /EFI/Linux/arch-linux.efi\noptions quiet\n"
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["files"] == {} and res["errors"][0].startswith(f"the default boot entry {path} is a unified kernel image")


def test_image_without_os_release_is_not_an_entry():
    files = load("arch-systemd-boot")
    files["/boot/EFI/Linux/broken.efi"] = pe_image({".linux": b"x"})
    assert [e["source"] for e in sdboot.next_boot(files, ARCH)["entries"]] == [
        "/boot/loader/entries/arch.conf", "/boot/loader/entries/arch-fallback.conf"]


# ---- broken layouts ----------------------------------------------------------------------------------------
def test_no_esp_is_an_error():
    res = sdboot.plan(load("arch-systemd-boot"), ENTRIES, {"esp": None})
    assert res["files"] == {} and res["errors"][0].startswith("no EFI system partition was found")


def test_no_entries_is_an_error():
    files = {p: t for p, t in load("arch-systemd-boot").items() if "/entries/" not in p}
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["files"] == {} and res["errors"] == [
        "no loader entries in /boot/loader/entries: this systemd-boot layout is unknown, nothing was changed"]


def test_default_efi_program_is_an_error():
    files = load("arch-systemd-boot")
    files["/boot/loader/entries/arch.conf"] = "title UEFI Shell\nefi /shellx64.efi\n"
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert res["files"] == {} and res["errors"][0].startswith("the default boot entry /boot/loader/entries/arch.conf starts "
                                                              "an EFI program")


# ---- systemd's comparison and glob ----------------------------------------------------------------------
ORDER = ["122.1", "123~rc1-1", "123", "123-a", "123-a.1", "123-1", "123-1.1", "123^post1", "123.a-1", "123.1-1", "123a-1", "124-1"]


@pytest.mark.parametrize("i", range(len(ORDER) - 1))
def test_strverscmp_follows_systemds_documented_order(i):
    assert sdboot.strverscmp(ORDER[i], ORDER[i + 1]) == -1
    assert sdboot.strverscmp(ORDER[i + 1], ORDER[i]) == 1
    assert sdboot.strverscmp(ORDER[i], ORDER[i]) == 0


@pytest.mark.parametrize("pattern,name,expected", [
    ("arch.conf", "arch.conf", True), ("arch", "arch.conf", False), ("arch-*", "arch-lts.conf", True),
    ("proxmox-*", "proxmox-6.8.12-4-pve.conf", True), ("a?ch.conf", "arch.conf", True), ("[a-c]rch.conf", "brch.conf", True),
    ("[!a]rch.conf", "!rch.conf", True), ("[!a]rch.conf", "brch.conf", False), (r"a\*.conf", "a*.conf", True),
    (r"a\*.conf", "ab.conf", False), ("[abc", "a", False)])
def test_fnmatch_is_systemd_boots_reduced_glob(pattern, name, expected):
    assert sdboot.fnmatch(pattern, name) is expected


def test_missing_kernel_cmdline_is_not_created_from_an_entry_without_options():
    files = load("arch-systemd-boot")
    for name in ("arch.conf", "arch-fallback.conf"):
        path = f"/boot/loader/entries/{name}"
        files[path] = files[path].replace(f"options {ARCH_OPTS}\n", "options\t\n")
    res = sdboot.plan(files, ENTRIES, ARCH)
    assert "/etc/kernel/cmdline" not in res["files"] and res["errors"] == []
    assert res["warnings"] == ["/etc/kernel/cmdline does not exist and the default entry has no options to create it from: "
                               "kernels installed before the reboot take /proc/cmdline and miss these parameters"]
