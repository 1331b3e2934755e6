"""Proxmox VE with proxmox-boot-tool over the installer's files (data/bootloaders/, sources in its
README): which loader the ESPs use (status output, uuid list), /etc/kernel/cmdline's first line for
systemd-boot, /etc/default/grub through the GRUB module, the refresh command, idempotence, and the
read-back with and without a mounted ESP."""
from __future__ import annotations


import pytest

from helpers import applied, BOOTLOADER_DATA as DATA, load

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as cfg
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_proxmox as proxmox
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

CTX = {"esp": "/boot/efi", "tools": {"proxmox-boot-tool", "update-grub", "grub-mkconfig"}}
ZFS = "root=ZFS=rpool/ROOT/pve-1 boot=zfs"
ENTRIES = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                       {"name": "quiet", "state": "absent"}])
ADDED = "intel_iommu=on iommu=pt"
REFRESH = [["proxmox-boot-tool", "refresh"]]
STATUS_UEFI = ("Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..\nSystem currently booted with uefi\n"
               "6A1B-2C3D is configured with: uefi (versions: 6.8.12-4-pve, 6.8.4-2-pve)\n")
STATUS_GRUB = ("Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..\nSystem currently booted with uefi\n"
               "6A1B-2C3D is configured with: grub (versions: 6.8.12-4-pve, 6.8.4-2-pve)\n")
STATUS_BIOS = ("System currently booted with legacy bios\n"
               "6A1B-2C3D is configured with: grub (versions: 6.8.12-4-pve, 6.8.4-2-pve)\n")


def content(result: dict, path: str) -> str:
    assert not result["errors"], result["errors"]
    return result["files"][path]["content"]


def esp_entry(kver: str, cmdline: str) -> str:
    """A loader entry exactly as zz-proxmox-boot's copy_and_config_kernels writes it."""
    return (f"title    Proxmox Virtual Environment\nversion  {kver}\noptions  {cmdline}\n"
            f"linux    /EFI/proxmox/{kver}/vmlinuz-{kver}\ninitrd   /EFI/proxmox/{kver}/initrd.img-{kver}\n")


# ---- data and registration --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["proxmox-8-systemd-boot", "proxmox-8-grub"])
def test_each_layout_is_cited_in_the_readme(layout):
    assert f"`{layout}/`" in (DATA / "README.md").read_text(encoding="utf-8")
    assert (DATA / layout).is_dir()


def test_the_stage_finds_the_module_under_proxmox():
    assert cfg.loader("proxmox") is proxmox


@pytest.mark.parametrize("layout,status,expected", [
    ("proxmox-8-systemd-boot", STATUS_UEFI, "systemd-boot"),
    ("proxmox-8-systemd-boot", STATUS_GRUB, "grub"),
    ("proxmox-8-systemd-boot", STATUS_BIOS, "grub"),
    ("proxmox-8-systemd-boot", None, "both"),
    ("proxmox-8-grub", None, "plain-grub"),
    ("proxmox-8-grub", STATUS_UEFI, "plain-grub"),   # no uuid list: proxmox-boot-tool manages nothing
])
def test_mode_from_the_uuid_list_and_the_status_output(layout, status, expected):
    assert proxmox.mode(load(layout), dict(CTX, proxmox_boot_status=status)) == expected


def test_mode_without_status_when_only_one_of_the_files_exists():
    files = load("proxmox-8-systemd-boot")
    assert proxmox.mode({p: t for p, t in files.items() if not p.startswith("/etc/default/grub")}, CTX) == "systemd-boot"
    assert proxmox.mode({p: t for p, t in files.items() if p != "/etc/kernel/cmdline"}, CTX) == "grub"


# ---- systemd-boot on the ESPs ---------------------------------------------------------------------------
def test_systemd_boot_edits_only_the_kernel_cmdline_and_refreshes():
    files = load("proxmox-8-systemd-boot")
    res = proxmox.plan(files, ENTRIES, dict(CTX, proxmox_boot_status=STATUS_UEFI))
    assert res["errors"] == [] and res["warnings"] == []
    assert res["files"] == {"/etc/kernel/cmdline": {"content": f"{ZFS} {ADDED}\n", "mode": None}}
    assert res["commands"] == REFRESH and res["config_path"] == "/etc/kernel/cmdline"


def test_only_the_first_line_of_the_kernel_cmdline_counts():
    files = load("proxmox-8-systemd-boot")
    files["/etc/kernel/cmdline"] = f"{ZFS} quiet\nquiet iommu=soft\n"
    res = proxmox.plan(files, ENTRIES, dict(CTX, proxmox_boot_status=STATUS_UEFI))
    assert content(res, "/etc/kernel/cmdline") == f"{ZFS} {ADDED}\nquiet iommu=soft\n"
    assert res["warnings"] == ["/etc/kernel/cmdline has 1 more non-empty line(s): proxmox-boot-tool reads only the first, "
                               "the others have no effect"]


def test_kernel_cmdline_without_root_is_refused():
    files = load("proxmox-8-systemd-boot")
    files["/etc/kernel/cmdline"] = "boot=zfs\n"
    res = proxmox.plan(files, ENTRIES, dict(CTX, proxmox_boot_status=STATUS_UEFI))
    assert res["files"] == {}
    assert res["errors"] == ["the first line of /etc/kernel/cmdline has no root=: proxmox-boot-tool refuses to refresh without "
                             "it; write the whole command line on its first line and run again"]


def test_missing_kernel_cmdline_is_created_from_proc_cmdline_on_the_live_system():
    files = {p: t for p, t in load("proxmox-8-systemd-boot").items() if p != "/etc/kernel/cmdline"}
    files["/proc/cmdline"] = f"initrd=\\EFI\\proxmox\\6.8.12-4-pve\\initrd.img-6.8.12-4-pve {ZFS} quiet\n"
    ctx = dict(CTX, proxmox_boot_status=STATUS_UEFI, live=True)
    res = proxmox.plan(files, ENTRIES, ctx)
    assert res["files"] == {"/etc/kernel/cmdline": {"content": f"{ZFS} {ADDED}\n", "mode": 0o644}}
    res = proxmox.plan(files, ENTRIES, dict(ctx, live=False))
    assert res["files"] == {} and res["errors"][0].startswith("/etc/kernel/cmdline does not exist: proxmox-boot-tool then "
                                                              "copies /proc/cmdline")


# ---- GRUB ---------------------------------------------------------------------------------------------------
def test_grub_on_the_esps_edits_default_grub_and_refreshes():
    files = load("proxmox-8-systemd-boot")
    res = proxmox.plan(files, ENTRIES, dict(CTX, proxmox_boot_status=STATUS_GRUB))
    assert list(res["files"]) == ["/etc/default/grub"]
    assert content(res, "/etc/default/grub") == files["/etc/default/grub"].replace(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="{ADDED}"')
    # /boot/grub/grub.cfg is not what the ESPs boot: refresh regenerates theirs
    assert res["commands"] == REFRESH


def test_plain_grub_is_the_grub_module_with_update_grub():
    files = load("proxmox-8-grub")
    res = proxmox.plan(files, ENTRIES, CTX)
    assert res["files"] == {"/etc/default/grub": {"content": files["/etc/default/grub"].replace(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="{ADDED}"'), "mode": None}}
    assert res["commands"] == [["update-grub"]] and res["errors"] == []


def test_unknown_loader_edits_both_files_and_says_so():
    files = load("proxmox-8-systemd-boot")
    res = proxmox.plan(files, ENTRIES, CTX)
    assert sorted(res["files"]) == ["/etc/default/grub", "/etc/kernel/cmdline"]
    assert content(res, "/etc/kernel/cmdline") == f"{ZFS} {ADDED}\n"
    assert res["commands"] == REFRESH
    assert res["warnings"] == ["/etc/kernel/proxmox-boot-uuids lists ESPs but whether they boot systemd-boot or GRUB is not known "
                               "without mounting them ('proxmox-boot-tool status'): both /etc/kernel/cmdline and "
                               "/etc/default/grub were updated and 'proxmox-boot-tool refresh' applies the one in use"]
    # the installer's zfs.cfg builds on GRUB_CMDLINE_LINUX and keeps root= there: left alone
    assert "/etc/default/grub.d/zfs.cfg" not in res["files"]


@pytest.mark.parametrize("layout,status", [("proxmox-8-systemd-boot", STATUS_UEFI), ("proxmox-8-systemd-boot", STATUS_GRUB),
                                           ("proxmox-8-systemd-boot", None), ("proxmox-8-grub", None)])
def test_planning_the_planned_files_again_changes_nothing(layout, status):
    files = load(layout)
    ctx = dict(CTX, proxmox_boot_status=status)
    first = proxmox.plan(files, ENTRIES, ctx)
    assert first["files"] and not first["errors"]
    second = proxmox.plan(applied(files, first), ENTRIES, ctx)
    assert second["files"] == {} and second["errors"] == []


def test_unknown_layout_is_an_error():
    res = proxmox.plan({"/etc/kernel/cmdline": f"{ZFS}\n"}, ENTRIES, CTX)
    assert res["files"] == {} and res["commands"] == []
    assert res["errors"] == ["neither /etc/kernel/proxmox-boot-uuids nor /etc/default/grub exists: this Proxmox boot layout is "
                             "unknown, nothing was changed (check 'proxmox-boot-tool status')"]


# ---- read-back -------------------------------------------------------------------------------------------
def test_read_back_without_a_mounted_esp_uses_the_kernel_cmdline_with_a_note():
    files = load("proxmox-8-systemd-boot")
    ctx = dict(CTX, proxmox_boot_status=STATUS_UEFI)
    nb = proxmox.next_boot(applied(files, proxmox.plan(files, ENTRIES, ctx)), ctx)
    assert nb["source"] == "/etc/kernel/cmdline" and nb["cmdline"] == f"{ZFS} {ADDED}"
    assert kp.missing(nb["cmdline"], ENTRIES) == [] and nb["errors"] == []
    assert nb["warnings"] == ["the ESPs are mounted by proxmox-boot-tool only while it refreshes them: this is the command line "
                              "refresh copied into their loader/entries/proxmox-*.conf, read from /etc/kernel/cmdline"]


def test_read_back_from_a_mounted_esp_follows_default_proxmox_star():
    files = load("proxmox-8-systemd-boot")
    files["/boot/efi/loader/loader.conf"] = "timeout 3\ndefault proxmox-*\n"
    files["/boot/efi/loader/entries/proxmox-6.8.4-2-pve.conf"] = esp_entry("6.8.4-2-pve", ZFS)
    files["/boot/efi/loader/entries/proxmox-6.8.12-4-pve.conf"] = esp_entry("6.8.12-4-pve", f"{ZFS} {ADDED}")
    nb = proxmox.next_boot(files, dict(CTX, proxmox_boot_status=STATUS_UEFI))
    assert nb["source"] == "/boot/efi/loader/entries/proxmox-6.8.12-4-pve.conf"
    assert nb["cmdline"] == f"{ZFS} {ADDED}"
    assert [e["source"].rsplit("/", 1)[-1] for e in nb["entries"]] == ["proxmox-6.8.12-4-pve.conf", "proxmox-6.8.4-2-pve.conf"]


def test_read_back_of_grub_on_the_esps_is_predicted_from_default_grub():
    files = load("proxmox-8-systemd-boot")
    ctx = dict(CTX, proxmox_boot_status=STATUS_GRUB)
    nb = proxmox.next_boot(applied(files, proxmox.plan(files, ENTRIES, ctx)), ctx)
    assert nb["source"] == "/etc/default/grub"
    assert nb["cmdline"] == f"{ZFS} {ADDED}"
    assert nb["warnings"][0].startswith("the ESPs are mounted by proxmox-boot-tool only while it refreshes them")


def test_read_back_of_plain_grub_reads_the_generated_grub_cfg():
    files = load("proxmox-8-grub")
    files["/boot/grub/grub.cfg"] = (
        "set default=\"0\"\n### BEGIN /etc/grub.d/10_linux ###\n"
        "menuentry 'Proxmox VE GNU/Linux' --class proxmox --class gnu-linux --class gnu --class os "
        "$menuentry_id_option 'gnulinux-simple-3c1f' {\n"
        f"\tlinux\t/boot/vmlinuz-6.8.12-4-pve root=/dev/mapper/pve-root ro {ADDED}\n"
        "\tinitrd\t/boot/initrd.img-6.8.12-4-pve\n}\n### END /etc/grub.d/10_linux ###\n")
    nb = proxmox.next_boot(files, CTX)
    assert nb["source"] == "/boot/grub/grub.cfg"
    assert nb["cmdline"] == f"root=/dev/mapper/pve-root ro {ADDED}"


def test_missing_kernel_cmdline_uses_the_stages_current_cmdline():
    files = {p: t for p, t in load("proxmox-8-systemd-boot").items() if p != "/etc/kernel/cmdline"}
    ctx = dict(CTX, proxmox_boot_status=STATUS_UEFI, live=True, current_cmdline=f"{ZFS} quiet")
    assert proxmox.plan(files, ENTRIES, ctx)["files"] == {"/etc/kernel/cmdline": {"content": f"{ZFS} {ADDED}\n", "mode": 0o644}}
