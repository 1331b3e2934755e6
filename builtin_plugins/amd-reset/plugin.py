"""amd-reset: AMD GPUs that cannot be reset between VM runs without the vendor-reset module.

Polaris, Vega 10/20 and Navi 10/12/14 cards do not come back from the resets the kernel knows
(FLR, bus reset): once a VM used one, restarting the VM fails or hangs until the host reboots.
The out-of-tree module vendor-reset (https://github.com/gnif/vendor-reset) adds a device-specific
reset for them. The device ids below are its device table (``src/device-db.h`` at commit
084881c6e9e11bdadaf05798e669568848e698a3).

For each such GPU the plugin reads, on the host, whether vendor-reset is loaded (or installed for
the running kernel) and the kernel's ``reset_method`` for the device (Linux 5.15 and later), and
stores and logs what is left to do. Only flagged GPUs cost round trips to the host.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.plugin_utils import api

AMD = "1002"
PROJECT = "https://github.com/gnif/vendor-reset"
UDEV_RULE = "99-vendor-reset.rules"
FAMILIES = {
    "Polaris 10": "67c0 67c1 67c2 67c4 67c7 67d0 67df 67c8 67c9 67ca 67cc 67cf 6fdf",
    "Polaris 11": "67e0 67e3 67e8 67eb 67ef 67ff 67e1 67e7 67e9",
    "Polaris 12": "6980 6981 6985 6986 6987 6995 6997 699f",
    "Vega 10": "6860 6861 6862 6863 6864 6867 6868 6869 686a 686b 686c 686d 686e 686f 687f",
    "Vega 20": "66a0 66a1 66a2 66a3 66a4 66a7 66af",
    "Navi 10": "7310 7312 7318 7319 731a 731b 731e 731f",
    "Navi 14": "7340 7341 7347 734f",
    "Navi 12": "7360 7362",
    "Arcturus (Instinct MI100)": "738c",
}
DEVICE_FAMILY = {dev: family for family, ids in FAMILIES.items() for dev in ids.split()}
RESET_METHOD_SINCE = (5, 15)  # the kernel's per-device reset_method attribute
MODULE_FILE = re.compile(r"(?:^|/)vendor[-_]reset\.ko(?:\.[a-z0-9]+)?:", re.M)


def family_of(gpu) -> str | None:
    if (gpu.vendor_id or "").lower() != AMD:
        return None
    return DEVICE_FAMILY.get((gpu.device_id or "").lower())


def kernel_tuple(release) -> tuple | None:
    m = re.match(r"^(\d+)\.(\d+)", str(release or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _read(target, path: str):
    """A file's text on the host, or None when it cannot be read (absent, or no access)."""
    if target is None:
        return None
    try:
        return target.read_file(path)
    except api.PluginError:
        return None


def module_state(target, kernel: str | None) -> str:
    """vendor-reset on the host: loaded, installed (for the running kernel), missing or unknown."""
    if target is None:
        return "unknown"
    if (_read(target, "/sys/module/vendor_reset/initstate") or "").strip() == "live":
        return "loaded"
    if not kernel:
        return "unknown"
    deps = _read(target, f"/lib/modules/{kernel}/modules.dep")
    if deps is None:
        return "unknown"
    return "installed" if MODULE_FILE.search(deps) else "missing"


def advice(bdf: str, module: str, reset_methods, kernel: tuple | None) -> tuple:
    """(status, [advice]): status is ``ok`` (nothing to do), ``action`` or ``unknown``."""
    set_method = (f"make the kernel use it: echo device_specific > /sys/bus/pci/devices/{bdf}/reset_method "
                  f"(as root, after each boot; the project's udev rule {UDEV_RULE} loads the module and does this)")
    has_attr = kernel is None or kernel >= RESET_METHOD_SINCE
    load = ("load it early at boot, before the GPU is first reset: add vendor-reset to /etc/modules-load.d/"
            "vendor-reset.conf (/etc/modules on Debian) and to the initramfs")
    if module == "loaded":
        if reset_methods and reset_methods[0] == "device_specific":
            return "ok", [f"vendor-reset is loaded and the kernel resets {bdf} with it (reset_method: device_specific)"]
        if reset_methods:
            return "action", [f"vendor-reset is loaded, but the kernel resets {bdf} with "
                              f"{' then '.join(reset_methods)} first, which leaves the GPU unusable; {set_method}"]
        if kernel is not None and kernel < RESET_METHOD_SINCE:
            return "ok", ["vendor-reset is loaded; kernels before 5.15 have no reset_method and use it by themselves"]
        return "unknown", [f"vendor-reset is loaded, but reset_method of {bdf} could not be read: check that "
                           f"/sys/bus/pci/devices/{bdf}/reset_method says device_specific, or {set_method}"]
    steps = []
    if module == "missing":
        steps.append(f"install vendor-reset ({PROJECT}; with DKMS: dkms install . in its source, which needs the "
                     f"kernel headers) and its udev rule {UDEV_RULE}")
    elif module == "unknown":
        steps.append(f"make sure vendor-reset ({PROJECT}) is installed for the running kernel (it could not be checked)")
    steps.append(load)
    if has_attr:
        steps.append(set_method)
    status = "action" if module in ("missing", "installed") else "unknown"
    return status, steps


class AmdReset(api.VfioPlugin):
    def on_gpu_detected(self, ctx, gpu):
        family = family_of(gpu)
        if family is None:
            return
        bdf = gpu.bdf()
        system = ctx.system_info()
        release = system.kernel if system is not None else None
        target = ctx.target()
        module = ctx.get("vendor_reset_module", str)
        if module is None:
            module = module_state(target, release)
            ctx.set("vendor_reset_module", module)
        methods = gpu.reset_methods  # from the facts; None when they did not carry it: read it on the host
        if methods is None:
            text = _read(target, f"/sys/bus/pci/devices/{bdf}/reset_method")
            methods = text.split() if text is not None else []
        status, steps = advice(bdf, module, list(methods), kernel_tuple(release))
        result = {"address": bdf, "device_id": gpu.device_id, "family": family, "model": gpu.model_name(),
                  "kernel": release, "vendor_reset": module, "reset_methods": list(methods),
                  "status": status, "advice": steps}
        ctx.set(f"amd_reset_{bdf}", result)
        flagged = ctx.get("flagged", list) or []
        if bdf not in flagged:
            ctx.set("flagged", flagged + [bdf])
        log = ctx.logger().info if status == "ok" else ctx.logger().warning
        log(f"AMD {family} GPU {gpu.model_name()} at {bdf} has the AMD reset bug: " + "; ".join(steps))

    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("reset", "AMD GPU reset", self.render)

    def render(self, ctx):
        flagged = ctx.get("flagged", list) or []
        if not flagged:
            return "No AMD GPU with the reset bug was found."
        out = {}
        for bdf in flagged:
            r = ctx.get(f"amd_reset_{bdf}", dict)
            out[bdf] = (f"{r['family']} ({AMD}:{r['device_id']}), vendor-reset {r['vendor_reset']}, reset_method "
                        f"{' '.join(r['reset_methods']) or 'unknown'}: {r['status']}; " + "; ".join(r["advice"]))
        return out


def create_plugin():
    return AmdReset()
