# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which bootloader really boots this host, with the evidence for the verdict.

Files of several bootloaders often coexist (a GRUB left behind after moving to
systemd-boot, kernelstub driving systemd-boot, Proxmox driving either), so every candidate
is collected with its evidence, and the EFI entry the firmware booted from wins when it
names a loader. Without it, the most specific layout wins.
"""
from __future__ import annotations

ESP_CANDIDATES = ("boot/efi", "efi", "boot")
# Most specific first: a tool that manages another loader beats the loader it manages.
PRIORITY = ("proxmox", "kernelstub", "grubby", "systemd-boot", "refind", "limine", "grub")
EFI_PATH_HINTS = (
    ("systemd-boot", ("systemd-boot", "systemd/")),
    ("refind", ("refind",)),
    ("limine", ("limine",)),
    ("grub", ("grub", "shim")),
)


def esp_mount(fs):
    """Where the EFI system partition is mounted (from /proc/mounts), else a likely directory."""
    text = fs.read_text("proc/mounts") or ""
    vfat = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "vfat":
            vfat.append(parts[1].replace("\\040", " "))
    for cand in ("/boot/efi", "/efi", "/boot"):
        if cand in vfat:
            return cand
    for cand in ESP_CANDIDATES:
        if fs.isdir(f"{cand}/EFI"):
            return "/" + cand
    return vfat[0] if vfat else None


def _first(fs, paths) -> list:
    return [p for p in paths if fs.exists(p)]


def detect_bootloader(fs, efi_entry=None) -> dict:
    esp = esp_mount(fs)
    e = (esp or "/boot/efi").strip("/")
    found: dict = {}

    def add(name, evidence):
        if evidence:
            found.setdefault(name, []).extend("/" + p for p in evidence)

    add("proxmox", _first(fs, ["etc/kernel/proxmox-boot-uuids", "usr/sbin/proxmox-boot-tool"])
        if fs.exists("etc/kernel/proxmox-boot-uuids") else [])
    add("kernelstub", _first(fs, ["etc/kernelstub/configuration", "usr/bin/kernelstub"])
        if fs.exists("etc/kernelstub/configuration") else [])
    grub_cfgs = _first(fs, ["boot/grub2/grub.cfg", "boot/grub/grub.cfg"])
    bls_entries = [f"boot/loader/entries/{n}" for n in fs.listdir("boot/loader/entries") if n.endswith(".conf")]
    blscfg = any("blscfg" in (fs.read_text(c) or "") for c in grub_cfgs)
    if blscfg and (fs.exists("usr/sbin/grubby") or fs.exists("usr/bin/grubby")):
        add("grubby", _first(fs, ["usr/sbin/grubby", "usr/bin/grubby"]) + grub_cfgs + bls_entries[:1])
    sdboot = _first(fs, [f"{e}/EFI/systemd/systemd-bootx64.efi", f"{e}/EFI/systemd/systemd-bootaa64.efi"])
    if sdboot:
        add("systemd-boot", sdboot + _first(fs, [f"{e}/loader/loader.conf", "etc/kernel/cmdline"]))
    refind = _first(fs, [f"{e}/EFI/refind/refind_x64.efi", f"{e}/EFI/refind/refind_aa64.efi",
                         f"{e}/EFI/BOOT/refind.conf", "boot/refind_linux.conf"])
    if refind:
        add("refind", refind)
    # limine's own search order (limine.conf at the ESP root, limine/, boot/, boot/limine/, EFI/BOOT/), plus
    # archinstall's EFI/arch-limine/ and the v7 limine.cfg
    limine = _first(fs, ["boot/limine.conf", "boot/limine/limine.conf", f"{e}/limine.conf", f"{e}/limine/limine.conf",
                         f"{e}/boot/limine/limine.conf", f"{e}/EFI/limine/limine.conf", f"{e}/EFI/arch-limine/limine.conf",
                         f"{e}/EFI/BOOT/limine.conf", "boot/limine.cfg", f"{e}/limine.cfg",
                         "etc/limine-entry-tool.conf", "etc/default/limine"])
    if limine:
        add("limine", limine)
    if grub_cfgs and not blscfg:
        add("grub", grub_cfgs + _first(fs, ["etc/default/grub", "usr/sbin/grub-mkconfig", "usr/sbin/grub2-mkconfig",
                                            "usr/bin/grub-mkconfig"]))
    elif grub_cfgs and blscfg and "grubby" not in found:
        add("grub", grub_cfgs + _first(fs, ["etc/default/grub"]))

    name = None
    evidence: list = []
    if efi_entry and efi_entry.get("path"):
        path = efi_entry["path"].replace("\\", "/").lower()
        for loader, hints in EFI_PATH_HINTS:
            if any(h in path for h in hints):
                # a managing tool over this loader still wins (kernelstub -> systemd-boot, etc.)
                managed = {"systemd-boot": ("kernelstub", "proxmox"), "grub": ("grubby", "proxmox")}.get(loader, ())
                name = next((m for m in managed if m in found), loader)
                evidence.append(f"EFI BootCurrent entry {efi_entry.get('description')!r} -> {efi_entry['path']}")
                break
    if name is None:
        name = next((n for n in PRIORITY if n in found), None)
    evidence.extend(found.get(name, []))
    return {
        "name": name,
        "evidence": evidence,
        "candidates": [{"name": n, "evidence": found[n]} for n in PRIORITY if n in found],
        "esp": esp,
        "efi_boot_entry": efi_entry,
    }
