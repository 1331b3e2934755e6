"""performance-monitor: asks the VM stage to sample each VM's QEMU process and sums the run up.

The VM stage does the sampling (``VmConfig.request_sampling``, API 1.1): plugins run on the
controller, and a thread of theirs would not outlive the stage's task. ``on_post_vm_shutdown``
gets the samples in ``VmStats.samples`` and computes the figures the spec's example logs.
"""
from __future__ import annotations

import time

from ansible_collections.exliar.vfio.plugins.plugin_utils import api

NAME = "performance-monitor"


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(stats: api.VmStats, started: float | None = None) -> dict:
    """The figures of one VM run. ``cpu_percent`` is QEMU's CPU time over wall time: with several
    busy vCPUs it goes above 100 (400 = four host CPUs' worth)."""
    samples = sorted((s for s in stats.samples if isinstance(s, dict) and _number(s.get("t")) is not None),
                     key=lambda s: s["t"])
    runtime = _number(stats.runtime_seconds) or 0.0
    if not runtime and len(samples) >= 2:
        runtime = samples[-1]["t"] - samples[0]["t"]
    if not runtime and started is not None:
        runtime = max(time.time() - started, 0.0)

    cpu = None
    timed = [s for s in samples if _number(s.get("cpu_seconds")) is not None]
    if len(timed) >= 2 and timed[-1]["t"] > timed[0]["t"]:
        cpu = (timed[-1]["cpu_seconds"] - timed[0]["cpu_seconds"]) / (timed[-1]["t"] - timed[0]["t"]) * 100
    elif _number(stats.cpu_time_seconds) is not None and runtime > 0:
        cpu = stats.cpu_time_seconds / runtime * 100

    per_gpu: dict = {}
    for s in samples:
        for address, busy in (s.get("gpu_busy") or {}).items():
            if _number(busy) is not None:
                per_gpu.setdefault(address, []).append(float(busy))
    values = [v for busy in per_gpu.values() for v in busy]
    gpu = sum(values) / len(values) if values else None

    memory = [m for m in [_number(s.get("rss_mib")) for s in samples] + [_number(stats.max_memory_mib)] if m is not None]
    return {
        "runtime_seconds": round(runtime, 1),
        "cpu_percent": None if cpu is None else round(cpu, 1),
        "gpu_percent": None if gpu is None else round(gpu, 1),
        "gpu_percent_by_device": {a: round(sum(v) / len(v), 1) for a, v in sorted(per_gpu.items())},
        "max_memory_mib": round(max(memory), 1) if memory else None,
        "samples": len(samples),
        "shutdown": stats.shutdown,
    }


def _fmt(value, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def summary_line(figures: dict) -> str:
    """The spec's line: ``VM Performance: Runtime: 125s, Avg GPU Usage: 63.2%, Avg CPU: 180.4%, Max Memory: 8230MB``."""
    return (f"VM Performance: Runtime: {_fmt(figures['runtime_seconds'], 's', 0)}, Avg GPU Usage: "
            f"{_fmt(figures['gpu_percent'], '%')}, Avg CPU: {_fmt(figures['cpu_percent'], '%')}, "
            f"Max Memory: {_fmt(figures['max_memory_mib'], 'MB', 0)}")


class PerformanceMonitor(api.VfioPlugin):
    def on_pre_vm_start(self, ctx, vm_config):
        interval = ctx.config().get_section(NAME).get("interval_seconds", 1.0)
        vm_config.request_sampling(interval)
        ctx.set(f"perf_{vm_config.name}_started", time.time())

    def on_post_vm_shutdown(self, ctx, vm_stats):
        figures = summarize(vm_stats, ctx.remove(f"perf_{vm_stats.name}_started", float))
        ctx.set(f"perf_{vm_stats.name}", figures)
        vms = ctx.get("perf_vms", list) or []
        if vm_stats.name not in vms:
            ctx.set("perf_vms", vms + [vm_stats.name])
        if not figures["samples"]:
            ctx.logger().warning(f"VM {vm_stats.name}: the VM stage returned no samples; the figures come from its totals")
        ctx.logger().info(f"{summary_line(figures)} (VM {vm_stats.name})")

    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("performance", "Performance", self.render)

    def render(self, ctx):
        vms = ctx.get("perf_vms", list) or []
        if not vms:
            return "No VM run was measured."
        out = {}
        for name in vms:
            figures = ctx.get(f"perf_{name}", dict)
            line = summary_line(figures)[len("VM Performance: "):]
            out[name] = f"{line}, {figures['samples']} samples" + (f", ended: {figures['shutdown']}" if figures["shutdown"] else "")
        return out


def create_plugin():
    return PerformanceMonitor()
