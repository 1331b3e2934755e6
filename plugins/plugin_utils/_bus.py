# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed events between plugins.

A subscription names an event class; a handler receives every emitted instance of it
(subclasses included). Each Ansible task runs in a new process, so subscriptions made with a
method of the plugin (``ctx.subscribe(GpuTuned, self.on_gpu_tuned)``) are remembered by name
and re-attached to the plugin in later tasks; other callables last for the current task.
"""
from __future__ import annotations

import importlib

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import VfioPlugin


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class EventBus:
    def __init__(self, deliver):
        """``deliver(plugin, handler, event)`` calls one handler with the manager's isolation."""
        self._deliver = deliver
        self._subs: list = []  # (plugin, event class, handler)
        self.persistent: list = []  # (plugin, "module:Qualname", method name)

    def subscribe(self, plugin: str, event_type: type, handler) -> None:
        if not isinstance(event_type, type):
            raise TypeError("subscribe() takes the event class, e.g. ctx.subscribe(MyEvent, self.on_my_event)")
        if any(p == plugin and t is event_type and h == handler for p, t, h in self._subs):
            return  # subscribing again (a later stage re-running setup code) must not deliver twice
        self._subs.append((plugin, event_type, handler))
        owner = getattr(handler, "__self__", None)
        name = getattr(handler, "__name__", None)
        # only a method of the plugin itself can be re-attached to the plugin in a later task
        if isinstance(owner, VfioPlugin) and name and getattr(owner, name, None) == handler:
            rec = (plugin, _type_name(event_type), name)
            if rec not in self.persistent:
                self.persistent.append(rec)

    def restore(self, records: list, instances: dict) -> None:
        """Re-attach method subscriptions recorded in an earlier task."""
        for plugin, type_name, method in records:
            inst = instances.get(plugin)
            if inst is None:
                continue
            module, _sep, qual = type_name.partition(":")
            try:
                cls = importlib.import_module(module)
                for part in qual.split("."):
                    cls = getattr(cls, part)
                handler = getattr(inst, method)
            except (ImportError, AttributeError):
                continue
            self.subscribe(plugin, cls, handler)

    def drop(self, plugin: str) -> None:
        self._subs = [s for s in self._subs if s[0] != plugin]
        self.persistent = [p for p in self.persistent if p[0] != plugin]

    def emit(self, source: str, event) -> int:
        """Deliver to every subscriber of the event's class; returns how many handlers ran."""
        count = 0
        for plugin, event_type, handler in list(self._subs):
            if isinstance(event, event_type):
                self._deliver(plugin, handler, event)
                count += 1
        return count
