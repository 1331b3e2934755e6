# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which initramfs generator builds this host's images, with the evidence for the verdict."""
from __future__ import annotations

GENERATORS = {
    "initramfs-tools": {"tools": ["usr/sbin/update-initramfs", "sbin/update-initramfs"],
                        "configs": ["etc/initramfs-tools/initramfs.conf"], "images": ("initrd.img-",)},
    "dracut": {"tools": ["usr/bin/dracut", "usr/sbin/dracut", "sbin/dracut"],
               "configs": ["etc/dracut.conf", "etc/dracut.conf.d", "usr/lib/dracut/dracut.conf.d"],
               "images": ("initramfs-", "initrd-", "initrd.img-")},
    "mkinitcpio": {"tools": ["usr/bin/mkinitcpio"], "configs": ["etc/mkinitcpio.conf", "etc/mkinitcpio.d"],
                   "images": ("initramfs-linux",)},
    "booster": {"tools": ["usr/bin/booster"], "configs": ["etc/booster.yaml"], "images": ("booster-",)},
}


def detect_initramfs(fs) -> dict:
    boot_files = fs.listdir("boot")
    found = {}
    for name, spec in GENERATORS.items():
        tools = [p for p in spec["tools"] if fs.exists(p)][:1]  # /sbin is often a link to /usr/sbin
        if not tools:
            continue
        evidence = ["/" + p for p in tools + [c for c in spec["configs"] if fs.exists(c)]]
        images = [f for f in boot_files if f.startswith(spec["images"])]
        found[name] = {"evidence": evidence, "images": images}
    if len(found) > 1:
        # several installed: the one whose image names are in /boot builds them
        with_images = [n for n in found if found[n]["images"]]
        unique = [n for n in with_images if not _ambiguous_images(n, found)]
        choice = unique[0] if len(unique) == 1 else None
    else:
        choice = next(iter(found), None)
    return {
        "name": choice,
        "evidence": found[choice]["evidence"] + ["/boot/" + i for i in found[choice]["images"][:2]] if choice else [],
        "candidates": [{"name": n, "evidence": v["evidence"]} for n, v in found.items()],
        "ambiguous": len(found) > 1 and choice is None,
    }


def _ambiguous_images(name, found) -> bool:
    """dracut's image names overlap initramfs-tools' and mkinitcpio's: only count it alone."""
    return name == "dracut" and any(o in found for o in ("initramfs-tools", "mkinitcpio"))
