"""recorder: implements every hook and records each call, for the integration tests.

Every call is appended to the list ``calls`` in the plugin's context storage and, as one JSON
line ``{"host", "hook", "detail", "token", "pid"}``, to the file named by the ``log`` key of its
configuration (rendering its report panel is logged as ``panel:calls``, in the file only).
``token`` is the value ``on_load`` stored: a later hook that sees it proves the storage outlived
the task (``pid`` tells the processes apart). Events of every plugin reach it through a
subscription to the base ``Event`` class.
"""
from __future__ import annotations

import json
import os

from ansible_collections.exliar.vfio.plugins.plugin_utils import api

TOKEN = "set-in-on_load"


class Recorder(api.VfioPlugin):
    def __init__(self):
        self.log_path = None
        self.host = None
        self.ctx = None

    def _record(self, ctx, hook, detail=None):
        self.ctx = ctx
        self.host = ctx.host
        self.log_path = ctx.config().get_section("recorder").get_str("log")
        token = ctx.get("token", str)
        calls = ctx.get_mut("calls", list)
        if calls is None:
            calls = []
            ctx.set("calls", calls)
        calls.append((hook, detail))
        self._write({"host": ctx.host, "hook": hook, "detail": detail, "token": token, "pid": os.getpid()})

    def _write(self, line):
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")

    # ---- lifecycle ---------------------------------------------------------------------
    def on_load(self, ctx):
        ctx.set("token", TOKEN)
        ctx.subscribe(api.Event, self.handle_event)
        self._record(ctx, "on_load", ctx.get("token", str))

    def on_unload(self, ctx):
        self._record(ctx, "on_unload")

    def on_system_detected(self, ctx, system):
        seen = ctx.system_info()
        self._record(ctx, "on_system_detected", {"distribution": system.distribution,
                                                 "service": seen.distribution if seen else None})

    def on_device_enumeration(self, ctx, devices):
        self._record(ctx, "on_device_enumeration", len(devices))

    def on_gpu_detected(self, ctx, gpu):
        self._record(ctx, "on_gpu_detected", gpu.bdf())

    def on_pre_vfio_bind(self, ctx, device):
        self._record(ctx, "on_pre_vfio_bind", device.bdf())
        ctx.state_tracker().record("recorder-pre-bind", address=device.bdf(), driver=device.driver)

    def on_post_vfio_bind(self, ctx, device):
        self._record(ctx, "on_post_vfio_bind", device.bdf())

    def on_pre_initramfs_update(self, ctx):
        self._record(ctx, "on_pre_initramfs_update")

    def on_post_initramfs_update(self, ctx):
        self._record(ctx, "on_post_initramfs_update")

    def on_pre_bootloader_update(self, ctx, bootloader):
        self._record(ctx, "on_pre_bootloader_update", bootloader.name)

    def on_post_bootloader_update(self, ctx, bootloader):
        self._record(ctx, "on_post_bootloader_update", bootloader.name)

    def on_pre_vm_start(self, ctx, vm_config):
        self._record(ctx, "on_pre_vm_start", vm_config.name)

    def on_post_vm_shutdown(self, ctx, vm_stats):
        self._record(ctx, "on_post_vm_shutdown", vm_stats.name)

    def on_cleanup(self, ctx):
        self._record(ctx, "on_cleanup")
        tracker = ctx.state_tracker()
        if tracker is not None:
            tracker.record("recorder-cleanup", calls=len(ctx.get("calls", list, [])))

    def register_ui_elements(self, ctx, ui_registry):
        self._record(ctx, "register_ui_elements")
        ui_registry.register_panel("calls", "Recorder panel", self.render)

    def on_ui_event(self, ctx, event):
        self._record(ctx, "on_ui_event", event.action)

    def register_commands(self, ctx, command_registry):
        self._record(ctx, "register_commands")
        command_registry.register_command("recorder-dump", "Print the recorded hook calls", self.dump)

    # ---- events, panel, command ----------------------------------------------------------
    def handle_event(self, event):
        detail = {"event_type": event.event_type, "address": getattr(event, "address", None),
                  "source": getattr(event, "source", None)}
        ctx = self.ctx
        if ctx is not None:
            ctx.get_mut("calls", list).append(("event", detail))
        self._write({"host": self.host, "hook": "event", "detail": detail,
                     "token": ctx.get("token", str) if ctx is not None else None, "pid": os.getpid()})

    def render(self, ctx):
        calls = ctx.get("calls", list, [])
        self._write({"host": ctx.host, "hook": "panel:calls", "detail": len(calls), "token": ctx.get("token", str),
                     "pid": os.getpid()})
        return {"recorder host": ctx.host, "recorder token": ctx.get("token", str),
                "recorded calls": len(calls)}

    def dump(self, args, ctx):
        return "\n".join(f"{hook} {detail}" for hook, detail in ctx.get("calls", list, []))


def create_plugin():
    return Recorder()
