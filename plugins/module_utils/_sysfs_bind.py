# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Move a PCI function between its host driver and vfio-pci in the running kernel.

The sequence is the kernel's own (Documentation/ABI/testing/sysfs-bus-pci): set
``driver_override`` so only the wanted driver may take the device, unbind it from its driver,
ask the bus to probe it again, then check the ``driver`` link (and ``/dev/vfio/<group>``).
"""
from __future__ import annotations

import os
import time

VFIO = "vfio-pci"


class BindError(Exception):
    pass


def _dev(root: str, addr: str, *rest: str) -> str:
    return os.path.join(root, "sys/bus/pci/devices", addr, *rest)


def current_driver(root: str, addr: str):
    try:
        return os.path.basename(os.readlink(_dev(root, addr, "driver")))
    except OSError:
        return None


def override_of(root: str, addr: str):
    try:
        with open(_dev(root, addr, "driver_override"), encoding="utf-8") as f:
            value = f.read().strip()
    except OSError:
        return None
    return None if value in ("", "(null)") else value


def _write(path: str, text: str, what: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise BindError(f"{what}: writing {text.strip() or 'an empty value'!r} to {path} failed: {exc.strerror or exc}") from exc


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _load(run_command, module: str, root: str, driver: str) -> None:
    if os.path.isdir(os.path.join(root, "sys/bus/pci/drivers", driver)):
        return
    rc, out, err = run_command(["modprobe", module])
    if rc != 0:
        raise BindError(f"modprobe {module} failed (rc {rc}): {(err or out).strip()}")


def bind(root: str, addr: str, group, run_command, timeout: float = 10.0) -> bool:
    """Put ``addr`` on vfio-pci. False when it already is. Raises BindError, after putting the
    device back where it was, when the kernel does not bind it."""
    if not os.path.isdir(_dev(root, addr)):
        raise BindError(f"{addr}: no such PCI device in the running kernel")
    before = current_driver(root, addr)
    if before == VFIO:
        return False
    _load(run_command, "vfio-pci", root, VFIO)
    _write(_dev(root, addr, "driver_override"), VFIO, addr)
    if before:
        _write(_dev(root, addr, "driver", "unbind"), addr, addr)
    probe_error = None
    try:
        _write(os.path.join(root, "sys/bus/pci/drivers_probe"), addr, addr)
    except BindError as exc:  # the probe's own error comes back through this write
        probe_error = str(exc)
    if not _wait(lambda: current_driver(root, addr) == VFIO, timeout):
        _rollback(root, addr)
        raise BindError(f"{addr}: the kernel did not bind it to vfio-pci ({probe_error or 'no driver link appeared'}); "
                        f"it was put back on {current_driver(root, addr) or 'no driver'}. The kernel log says why: "
                        f"`dmesg | grep -i -e vfio -e {addr}`")
    if group is not None and not _wait(lambda: os.path.exists(os.path.join(root, "dev/vfio", str(group))), timeout):
        raise BindError(f"{addr} is on vfio-pci but /dev/vfio/{group} did not appear: the IOMMU group is not usable "
                        f"(is the IOMMU on? `dmesg | grep -i -e DMAR -e AMD-Vi`)")
    return True


def _rollback(root: str, addr: str) -> None:
    try:
        _write(_dev(root, addr, "driver_override"), "\n", addr)
        _write(os.path.join(root, "sys/bus/pci/drivers_probe"), addr, addr)
    except BindError:
        pass


def release(root: str, addr: str, driver, module, run_command, timeout: float = 10.0) -> bool:
    """Take ``addr`` off vfio-pci and give it back to ``driver`` (None: leave it without one).
    False when there was nothing to do."""
    if not os.path.isdir(_dev(root, addr)):
        raise BindError(f"{addr}: no such PCI device in the running kernel")
    now, override = current_driver(root, addr), override_of(root, addr)
    if now == driver and override is None:
        return False
    if now == VFIO:
        _write(_dev(root, addr, "driver", "unbind"), addr, addr)
    if not driver:
        if override is not None:
            _write(_dev(root, addr, "driver_override"), "\n", addr)
        return True
    # Only ``driver`` may take it: after a boot with vfio-pci.ids= on the command line the running vfio-pci
    # holds those ids, was registered first, and would win a plain re-probe.
    _write(_dev(root, addr, "driver_override"), driver, addr)
    try:
        if module:
            _load(run_command, module, root, driver)
        if current_driver(root, addr) is None:
            try:
                _write(os.path.join(root, "sys/bus/pci/drivers_probe"), addr, addr)
            except BindError:
                pass
        if not _wait(lambda: current_driver(root, addr) == driver, timeout):
            raise BindError(f"{addr}: cleared from vfio-pci but {driver} did not take it back (now: "
                            f"{current_driver(root, addr) or 'no driver'}); a reboot restores it. See `dmesg`")
    finally:
        _write(_dev(root, addr, "driver_override"), "\n", addr)
    return True
