"""nvidia-handler: the NVIDIA Code 43 workarounds for VMs that receive an NVIDIA GPU.

Before driver release 465, NVIDIA's GeForce driver stopped with error 43 in a guest it found
running on a hypervisor (the CPUID hypervisor bit, KVM's signature, Hyper-V's vendor id). From
R465 on, GeForce passthrough is supported and the workaround is not needed; hiding the
hypervisor then only costs the guest its paravirtual features. The plugin therefore applies it
unless the configured guest driver is R465 or newer. Nothing on the host tells which driver the
guest runs, so without ``guest_driver_version`` it assumes an old one.
"""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api

NAME = "nvidia-handler"
NVIDIA = "10de"
FIXED_IN = 465  # the first driver branch that allows GeForce passthrough
DEFAULT_VENDOR_ID = "exliarvfio01"


def storage_key(bdf: str) -> str:
    return f"gpu_{bdf}_code_43_vulnerable"


def is_nvidia_gpu(dev) -> bool:
    return (dev.vendor_id or "").lower() == NVIDIA and bool(dev.class_code) and dev.class_code.startswith("03")


def driver_branch(version) -> int | None:
    """``"531.41"`` -> 531; None when the text does not start with a branch number."""
    head = str(version).strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


def decide(section: api.ConfigSection) -> tuple:
    """(needed, why) from the plugin's configuration."""
    version = section.get_str("guest_driver_version")
    if version is None or not version.strip():
        return True, "the guest's driver version is unknown (set guest_driver_version), so an old driver is assumed"
    branch = driver_branch(version)
    if branch is None:
        return True, f"guest_driver_version {version!r} is not a driver version like 531.41; an old driver is assumed"
    if branch >= FIXED_IN:
        return False, f"the guest driver {version} is R{FIXED_IN} or newer, which allows passthrough"
    return True, f"the guest driver {version} is older than R{FIXED_IN}"


class NvidiaHandler(api.VfioPlugin):
    def on_gpu_detected(self, ctx, gpu):
        if not is_nvidia_gpu(gpu):
            return
        needed, why = decide(ctx.config().get_section(NAME))
        ctx.set(storage_key(gpu.bdf()), needed)
        verdict = "needs" if needed else "does not need"
        ctx.logger().info(f"NVIDIA GPU detected: {gpu.model_name()} at {gpu.bdf()}; it {verdict} the Code 43 "
                          f"workaround: {why}")

    def on_pre_vm_start(self, ctx, vm_config):
        section = ctx.config().get_section(NAME)
        vendor_id = section.get_str("vendor_id", DEFAULT_VENDOR_ID)
        for dev in vm_config.devices:
            if not is_nvidia_gpu(dev):
                continue
            needed = ctx.get(storage_key(dev.bdf()), bool)
            if needed is None:  # detection did not see it in this run: decide from the configuration
                needed = decide(section)[0]
            if not needed:
                ctx.logger().info(f"VM {vm_config.name}: GPU {dev.bdf()} does not need the Code 43 workarounds")
                continue
            vm_config.add_hypervisor_hidden(True)
            vm_config.add_vendor_id(vendor_id)
            vm_config.add_kvm_hidden(True)
            ctx.logger().info(f"Applied NVIDIA Code 43 workarounds for GPU {dev.bdf()}")


def create_plugin():
    return NvidiaHandler()
