# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""dracut (Fedora, RHEL, openSUSE, and Debian/Ubuntu when installed): one owned drop-in,
``/etc/dracut.conf.d/exliar-vfio.conf``.

dracut's behaviour this rests on (dracut-ng 111, and dracutdevs/dracut 059 where noted):

- ``force_drivers+=" ... "`` (dracut.conf(5): "in this case it is ensured that the drivers are tried
  to be loaded early via modprobe"). dracut.conf(5) writes every list as ``+=" <list> "``: the spaces inside the
  quotes keep values that several files append from running together.
  dracut.sh installs them with ``instmods -c`` and, since dracut 039, writes ``rd.driver.pre=<module>``
  for each into the image's ``/etc/cmdline.d/20-force_drivers.conf``, which dracut-lib's getcmdline
  reads like the kernel command line (and dracut-pre-udev.service runs on
  ``ConditionPathExistsGlob=|/etc/cmdline.d/*.conf``). ``rd.driver.pre=vfio_pci`` is still handed to the
  bootloader stage for the kernel command line: it repeats what a current image says, and it is what
  makes vfio-pci load early with a dracut older than 039 or a ``kernel_only`` build. Built-in modules
  are accepted (dracut-install: "is a builtin kernel module"); a missing one is logged ("Failed to
  find module") without failing the build.
- ``/etc/modprobe.d/*.conf`` goes into the image only in host-only mode
  (``[[ $hostonly ]] && inst_multiple -H -o /etc/modprobe.d/*.conf /etc/modprobe.conf``: module
  90kernel-modules up to dracut 107, 80base since 108). Host-only is the default only since
  dracut-ng 109; before, it is on where the distribution sets it (Fedora's and openSUSE's
  01-dist.conf: ``hostonly="yes"``), and Debian's dracut set nothing. So ``install_items`` names the
  modprobe file, and the override script that its ``install`` line runs, in every mode. Both need
  ``kernel_only`` off: dracut.sh installs ``install_items`` and writes cmdline.d only then.
- conf.d files are read in alphanumerical order over /usr/lib/dracut/dracut.conf.d and
  /etc/dracut.conf.d, after /etc/dracut.conf: a later file that assigns ``force_drivers=`` or
  ``install_items=`` (not ``+=``) drops what this one adds.
- The image name: ``initramfs-<kver>.img`` in /boot by default; ``initrdname`` (dracut-ng >= 102)
  makes it ``initrd.img-<kver>`` on Debian (dracut.conf.d/debian/01-debian.conf, from 109) and
  ``initrd-<kver>`` on openSUSE. An older dracut writes /boot/initramfs-<kver>.img unless told the
  path, so the path is given explicitly where the distribution's name is not dracut's default.
  With a BLS layout (/boot/loader/entries and /boot/<machine-id>/ present) dracut writes
  /boot/<machine-id>/<kver>/initrd instead.
"""
from __future__ import annotations

import os
import re

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as cfg

DROPIN = "/etc/dracut.conf.d/exliar-vfio.conf"
INPUTS = (DROPIN, "/etc/dracut.conf", "/etc/dracut.conf.d/*.conf", "/usr/lib/dracut/dracut.conf.d/*.conf")
_RESET = re.compile(r"^\s*(force_drivers|install_items)=")
_KERNEL_ONLY = re.compile(r"""^\s*kernel_only=["']?yes["']?\s*(#.*)?$""")


def render(view) -> str:
    lines = [cfg.OWNED_HEADER.rstrip("\n"), "#",
             "# force_drivers: in the image and loaded early (dracut writes rd.driver.pre=<module> into the image's",
             "# /etc/cmdline.d). install_items: dracut copies /etc/modprobe.d only in host-only mode, so the file,",
             "# and the program its install line runs, are named here."]
    if view.modules:
        lines.append(f'force_drivers+=" {" ".join(view.modules)} "')
    if view.files:
        lines.append(f'install_items+=" {" ".join(view.files)} "')
    return "\n".join(lines) + "\n"


def _checks(current: dict) -> list:
    warnings = []
    mine = os.path.basename(DROPIN)
    for path, text in sorted(current.items()):
        if path == DROPIN or not text or not path.endswith(".conf") or "/dracut.conf" not in path:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            m = _RESET.match(line)
            if m and path != "/etc/dracut.conf" and os.path.basename(path) > mine:
                warnings.append(f"{path}:{no} sets {m.group(1)}= (not +=) after {DROPIN} is read, so it drops the vfio entries: "
                                f"make it {m.group(1)}+=\" ... \"")
            if _KERNEL_ONLY.match(line):
                warnings.append(f"{path}:{no} sets kernel_only=yes: dracut then installs no install_items and writes no "
                                f"rd.driver.pre, so vfio-pci gets neither its options nor an early load in the image")
    return warnings


def plan(view, current: dict, tool_version=None) -> dict:
    if view.empty:
        return cfg.result(files={DROPIN: None})
    return cfg.result(files={DROPIN: {"content": render(view), "mode": 0o644}}, warnings=_checks(current),
                      kernel_params=["rd.driver.pre=vfio_pci"])


def _explicit_image(kernel: str, distro_family):
    if distro_family == "debian":
        return f"/boot/initrd.img-{kernel}"
    if distro_family == "suse":
        return f"/boot/initrd-{kernel}"
    return None


def regenerate_commands(kernels: list, root_is_live: bool, distro_family=None) -> list:
    """``dracut --force`` per kernel: ``--kver`` alone where dracut's default name is the distribution's
    (Fedora, RHEL, Arch), the image path and version where it is not (Debian, openSUSE)."""
    extra = [] if root_is_live else ["--no-hostonly"]
    out = []
    for k in kernels:
        path = _explicit_image(k, distro_family)
        out.append(["dracut", "--force"] + extra + ([path, k] if path else ["--kver", k]))
    return out


def image_candidates(kernel: str, distro_family=None) -> dict:
    path = _explicit_image(kernel, distro_family) or f"/boot/initramfs-{kernel}.img"
    return {"paths": [path, f"/lib/modules/{kernel}/initrd"], "by_version": True,
            "note": "dracut names the image after the kernel version; with a BLS layout (/boot/loader/entries and "
                    "/boot/<machine-id>/) it writes /boot/<machine-id>/<version>/initrd"}


def list_command(image: str) -> list:
    return ["lsinitrd", image]
