"""EventBus: typed delivery, persistent method subscriptions and their restore in a later task."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._bus import EventBus

EVENT_MODULE = __name__


@dataclass
class GpuTuned(api.Event):
    event_type = "gpu_tuned"
    address: str = ""


@dataclass
class GpuTunedTwice(GpuTuned):
    event_type = "gpu_tuned_twice"


class Other(api.Event):
    event_type = "other"


class Outer:
    @dataclass
    class Inner(api.Event):
        event_type = "inner"


class Listener(api.VfioPlugin):
    def __init__(self):
        self.got = []

    def on_tuned(self, event):
        self.got.append(event.event_type)


def direct_bus():
    """A bus whose delivery just calls the handler, recording (plugin, event type)."""
    log = []

    def deliver(plugin, handler, event):
        log.append((plugin, event.event_type))
        handler(event)

    return EventBus(deliver), log


def test_handlers_receive_their_class_and_its_subclasses_only():
    bus, log = direct_bus()
    seen = []
    bus.subscribe("a", GpuTuned, seen.append)
    bus.subscribe("b", api.Event, seen.append)
    assert bus.emit("src", GpuTunedTwice("0000:01:00.0")) == 2
    assert bus.emit("src", Other()) == 1
    assert log == [("a", "gpu_tuned_twice"), ("b", "gpu_tuned_twice"), ("b", "other")]
    assert [e.event_type for e in seen] == ["gpu_tuned_twice", "gpu_tuned_twice", "other"]


def test_subscribe_takes_a_class():
    bus, _log = direct_bus()
    with pytest.raises(TypeError, match="subscribe\\(\\) takes the event class"):
        bus.subscribe("a", GpuTuned(), print)


def test_only_method_subscriptions_are_persistent():
    bus, _log = direct_bus()
    listener = Listener()
    bus.subscribe("l", GpuTuned, listener.on_tuned)
    bus.subscribe("l", GpuTuned, listener.on_tuned)
    bus.subscribe("l", Other, lambda e: None)

    def handler(event):
        return event

    bus.subscribe("l", Other, handler)
    assert bus.persistent == [("l", f"{EVENT_MODULE}:GpuTuned", "on_tuned")]


def test_restore_reattaches_a_method_subscription_to_the_new_instance():
    first, _log = direct_bus()
    old = Listener()
    first.subscribe("l", GpuTuned, old.on_tuned)
    records = list(first.persistent)

    second, log = direct_bus()  # the next task: a new process, a new plugin instance
    new = Listener()
    second.restore(records, {"l": new})
    assert second.emit("src", GpuTuned("0000:01:00.0")) == 1
    assert second.emit("src", Other()) == 0
    assert new.got == ["gpu_tuned"] and old.got == []
    assert log == [("l", "gpu_tuned")]
    assert second.persistent == records


def test_restore_of_a_nested_event_class_and_of_the_base_class():
    first, _log = direct_bus()
    listener = Listener()
    first.subscribe("l", Outer.Inner, listener.on_tuned)
    first.subscribe("l", api.Event, listener.on_tuned)
    assert first.persistent[0][1] == f"{EVENT_MODULE}:Outer.Inner"
    assert first.persistent[1][1] == "ansible_collections.exliar.vfio.plugins.plugin_utils.api:Event"
    second, _log = direct_bus()
    new = Listener()
    second.restore(first.persistent, {"l": new})
    assert second.emit("src", Outer.Inner()) == 2
    assert new.got == ["inner", "inner"]


def test_restore_skips_what_it_cannot_find():
    bus, _log = direct_bus()
    bus.restore([("gone", f"{EVENT_MODULE}:GpuTuned", "on_tuned"),
                 ("l", "no_such_module_exliar:Event", "on_tuned"),
                 ("l", f"{EVENT_MODULE}:NoSuchEvent", "on_tuned")], {"l": Listener()})
    assert bus.emit("src", GpuTuned()) == 0 and bus.persistent == []


class Helper:
    def on_helper_event(self, event):
        pass


@pytest.mark.parametrize("handler", [Helper().on_helper_event, print], ids=["helper-method", "builtin-print"])
def test_a_subscription_with_another_objects_method_does_not_break_the_next_task(handler):
    first, _log = direct_bus()
    first.subscribe("l", GpuTuned, handler)  # not a method of the plugin: lasts for this task only
    second, _log = direct_bus()
    second.restore(first.persistent, {"l": Listener()})  # the plugin has no such method
    assert second.emit("src", GpuTuned()) == 0


def test_drop_forgets_a_plugins_subscriptions():
    bus, _log = direct_bus()
    a, b = Listener(), Listener()
    bus.subscribe("a", GpuTuned, a.on_tuned)
    bus.subscribe("b", GpuTuned, b.on_tuned)
    bus.drop("a")
    assert bus.emit("src", GpuTuned()) == 1
    assert a.got == [] and b.got == ["gpu_tuned"]
    assert [p for p, _t, _m in bus.persistent] == ["b"]
