"""gpu-inventory: an example exliar.vfio extension plugin (see docs/plugins/authoring.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import Event, VfioPlugin


@dataclass
class CandidateFound(Event):
    """Emitted for every GPU whose IOMMU group can be passed through as it is."""

    event_type = "gpu_candidate"
    address: str = ""
    model: str = ""


@dataclass
class Inventory:
    distribution: str | None = None
    gpus: list = field(default_factory=list)
    candidates: list = field(default_factory=list)


class GpuInventory(VfioPlugin):
    def __init__(self):
        self.announced = []  # candidates other plugins (and this one) announced during this stage

    def on_load(self, ctx):
        section = ctx.config().get_section("gpu-inventory")
        ctx.set("include_integrated", bool(section.get_bool("include_integrated", False)))
        ctx.set("inventory", Inventory())
        ctx.subscribe(CandidateFound, self.handle_candidate)
        ctx.logger().info("gpu-inventory loaded")

    def on_system_detected(self, ctx, system):
        ctx.get_mut("inventory", Inventory).distribution = system.distribution

    def on_gpu_detected(self, ctx, gpu):
        if gpu.kind == "integrated" and not ctx.get("include_integrated", bool):
            return
        inv = ctx.get_mut("inventory", Inventory)
        inv.gpus.append(f"{gpu.bdf()} {gpu.model_name()} ({gpu.vendor()})")
        if gpu.group_viable:
            ctx.emit(CandidateFound(address=gpu.bdf(), model=gpu.model_name()))

    def handle_candidate(self, event):
        # handlers receive the events of every plugin, this one included
        self.announced.append(event.address)

    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("gpus", "GPU inventory", self.render)

    def render(self, ctx):
        inv = ctx.get("inventory", Inventory, Inventory())
        return {"distribution": inv.distribution, "GPUs": len(inv.gpus), "list": "; ".join(inv.gpus) or "none"}

    def register_commands(self, ctx, command_registry):
        command_registry.register_command("count-gpus", "Print how many GPUs each host has", self.count)

    def count(self, args, ctx):
        inv = ctx.get("inventory", Inventory, Inventory())
        return f"{len(inv.gpus)} GPU(s)"

    def on_cleanup(self, ctx):
        tracker = ctx.state_tracker()
        if tracker is not None:
            tracker.record("inventory-complete", gpus=len(ctx.get("inventory", Inventory, Inventory()).gpus))


def create_plugin():
    return GpuInventory()
