"""PluginManager in-process: loading in dependency order, isolated dispatch, timeouts, critical plugins,
enable/disable, unload, the mutating hook and hook signatures. No Ansible run: a gate approves everything."""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import (
    CriticalPluginFailure,
    PluginManager,
    implemented_hooks,
)
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest

REPO = Path(__file__).resolve().parents[4]
HEADER = "from ansible_collections.exliar.vfio.plugins.plugin_utils import api\n\n"


def allow_all(meta):  # pylint: disable=unused-argument
    return True, None, []


def make_plugin(base: Path, name: str, body: str, *, cls: str = "P", deps: dict | None = None,
                permissions=(), critical: bool = False, timeout: float | None = None) -> Path:
    """Write ``base/name/{plugin.toml,plugin.py}``; ``body`` is the class body of ``cls(api.VfioPlugin)``."""
    pdir = base / name
    pdir.mkdir(parents=True)
    lines = [f'name = "{name}"', 'version = "1.0.0"', f'description = "test plugin {name}"',
             'author = "tests"', 'api_version = "1.0"', f"permissions = {list(permissions)!r}".replace("'", '"'),
             f"critical = {'true' if critical else 'false'}"]
    if timeout is not None:
        lines.append(f"timeout = {timeout}")
    if deps:
        lines.append("[dependencies]")
        lines += [f'{dep} = "{req}"' for dep, req in deps.items()]
    (pdir / "plugin.toml").write_text("\n".join(lines) + "\n")
    code = HEADER + f"class {cls}(api.VfioPlugin):\n" + textwrap.indent(textwrap.dedent(body).strip() or "pass", "    ")
    code += f"\n\n\ndef create_plugin():\n    return {cls}()\n"
    (pdir / "plugin.py").write_text(code)
    return pdir


def manager_with(base: Path, specs: dict, config: dict | None = None, **kwargs) -> PluginManager:
    """``specs``: name -> body or (body, make_plugin keyword arguments); loads them all."""
    metas = []
    for name, spec in specs.items():
        body, opts = (spec if isinstance(spec, tuple) else (spec, {}))
        metas.append(load_manifest(make_plugin(base, name, body, **opts)))
    m = PluginManager("host1", config, gate=allow_all, **kwargs)
    m.load_all(metas)
    return m


RECORD = """
def on_load(self, ctx):
    ctx.set("seen", [])

def on_system_detected(self, ctx, system):
    ctx.get_mut("seen", list).append(("on_system_detected", system.distribution))

def on_gpu_detected(self, ctx, gpu):
    ctx.get_mut("seen", list).append(("on_gpu_detected", gpu.address))

def on_unload(self, ctx):
    ctx.get_mut("seen", list).append(("on_unload", None))
"""


# ---- loading -------------------------------------------------------------------------------

def test_load_order_follows_dependencies(tmp_path):
    m = manager_with(tmp_path, {
        "alpha": ("def on_load(self, ctx):\n    pass", {"deps": {"zeta": ">=1.0"}}),
        "mid": ("def on_load(self, ctx):\n    pass", {"deps": {"alpha": ""}}),
        "zeta": "def on_load(self, ctx):\n    pass",
        "beta": "def on_load(self, ctx):\n    pass",
    })
    assert list(m.plugins) == ["beta", "zeta", "alpha", "mid"]
    m.start()
    assert [c.hook for c in m.calls] == ["on_load"] * 4
    assert [c.plugin for c in m.calls] == ["beta", "zeta", "alpha", "mid"]


def test_a_plugin_whose_dependency_is_missing_is_rejected_and_others_load(tmp_path):
    m = manager_with(tmp_path, {"lonely": ("", {"deps": {"ghost": ">=2"}}), "fine": ""})
    assert list(m.plugins) == ["fine"]
    assert m.rejected == {"lonely": "needs ghost >=2 which is not installed"}


def test_load_plugin_refuses_a_plugin_whose_dependency_is_not_loaded(tmp_path):
    m = PluginManager("h", gate=allow_all)
    make_plugin(tmp_path, "base", "")
    child = make_plugin(tmp_path, "child", "", deps={"base": ""})
    with pytest.raises(api.PluginError, match="plugin child needs base: load it first"):
        m.load_plugin(child)
    m.load_plugin(tmp_path / "base")
    assert m.load_plugin(child).name == "child"
    assert list(m.plugins) == ["base", "child"]


def test_the_gate_can_refuse_a_plugin(tmp_path):
    meta = load_manifest(make_plugin(tmp_path, "refused", ""))
    m = PluginManager("h", gate=lambda meta: (False, "not approved: approve it", []))
    assert m.load_all([meta]) == []
    assert m.rejected == {"refused": "not approved: approve it"}


def test_discover_reports_a_bad_manifest_and_imports_nothing(tmp_path):
    make_plugin(tmp_path, "good", "")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "plugin.toml").write_text('name = "bad"\n')
    m = PluginManager("h", gate=allow_all)
    metas = m.discover_plugins(tmp_path)
    assert [x.name for x in metas] == ["good"]
    assert "required key is missing" in m.rejected["bad"]
    assert m.plugins == {}


def test_a_plugin_that_fails_to_import_is_rejected_not_fatal(tmp_path):
    pdir = make_plugin(tmp_path, "broken", "")
    (pdir / "plugin.py").write_text("raise ImportError('no such thing')\n")
    m = manager_with(tmp_path / "more", {"fine": ""})
    m.load_all([load_manifest(pdir)])
    assert "fine" in m.plugins and "broken" not in m.plugins
    assert "failed to load: ImportError: no such thing" in m.rejected["broken"]


def test_create_plugin_must_return_the_plugin_the_manifest_names(tmp_path):
    pdir = make_plugin(tmp_path, "named", "name = 'other'")
    m = PluginManager("h", gate=allow_all)
    m.load_all([load_manifest(pdir)])
    assert m.rejected["named"] == "plugin.toml says 'named' but create_plugin() returned 'other'"


def test_identity_comes_from_the_manifest(tmp_path):
    m = manager_with(tmp_path, {"ident": ""})
    inst = m.get_plugin("ident")
    assert (inst.name, inst.version, inst.author) == ("ident", "1.0.0", "tests")


def test_a_misnamed_hook_is_reported_at_load(tmp_path):
    m = manager_with(tmp_path, {"typo": "def on_gpu_detect(self, ctx, gpu):\n    pass"})
    meta = m.meta["typo"]
    assert any(w.startswith("on_gpu_detect() looks like a hook but is not one, so it is never called") for w in meta.warnings)
    assert meta.hooks == []
    assert m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0")) == []
    assert m.calls == []


def test_the_example_plugin_loads_without_warnings_about_its_hooks():
    meta = load_manifest(REPO / "examples" / "plugins" / "gpu-inventory")
    m = PluginManager("h", gate=allow_all)
    m.load_all([meta])
    assert "gpu-inventory" in m.plugins
    assert not [w for w in meta.warnings if "looks like a hook" in w], meta.warnings


def test_implemented_hooks_lists_only_overridden_hooks(tmp_path):
    m = manager_with(tmp_path, {"some": RECORD})
    assert m.meta["some"].hooks == ["on_load", "on_system_detected", "on_gpu_detected", "on_unload"]
    assert m.meta["some"].hooks == implemented_hooks(m.get_plugin("some"))
    assert m.active("on_gpu_detected") == ["some"] and m.active("on_cleanup") == []


# ---- dispatch --------------------------------------------------------------------------------

def test_hooks_receive_their_data_and_storage_persists_between_hooks(tmp_path):
    m = manager_with(tmp_path, {"rec": RECORD})
    m.start()
    assert m.invoke_hook("on_system_detected", api.SystemInfo(distribution="debian")) == []
    assert m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0")) == []
    assert m.contexts["rec"].get("seen") == [("on_system_detected", "debian"), ("on_gpu_detected", "0000:01:00.0")]
    assert [(c.plugin, c.hook, c.ok) for c in m.calls] == [
        ("rec", "on_load", True), ("rec", "on_system_detected", True), ("rec", "on_gpu_detected", True)]


@pytest.mark.parametrize("signature", ["self, ctx", "self", "self, *args", "self, ctx, gpu, extra=None"])
def test_a_hook_may_take_fewer_arguments(tmp_path, signature):
    body = f"""
    def on_gpu_detected({signature}):
        type(self).called = True
    """
    m = manager_with(tmp_path, {"short": body})
    assert m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0")) == []
    assert m.get_plugin("short").called is True
    assert m.calls[-1].ok


def test_a_raising_plugin_is_isolated_and_reported(tmp_path):
    m = manager_with(tmp_path, {
        "a-bad": "def on_system_detected(self, ctx, system):\n    raise RuntimeError('boom')",
        "b-good": RECORD,
    })
    m.start()
    failures = m.invoke_hook("on_system_detected", api.SystemInfo(distribution="arch"))
    assert [f.as_dict() for f in failures] == [{"host": "host1", "plugin": "a-bad", "hook": "on_system_detected",
                                                "error": "RuntimeError: boom", "kind": "error", "critical": False}]
    assert m.failures == failures
    assert m.contexts["b-good"].get("seen") == [("on_system_detected", "arch")]


def test_each_plugin_gets_its_own_copy_of_the_hook_argument(tmp_path):
    m = manager_with(tmp_path, {
        "a-changer": "def on_device_enumeration(self, ctx, devices):\n    devices.clear()",
        "b-reader": "def on_device_enumeration(self, ctx, devices):\n    ctx.set('n', len(devices))",
    })
    devices = [api.PciDevice("0000:00:01.0"), api.PciDevice("0000:00:02.0")]
    assert m.invoke_hook("on_device_enumeration", devices) == []
    assert m.contexts["b-reader"].get("n") == 2 and len(devices) == 2


def test_an_unknown_hook_is_refused(tmp_path):
    m = manager_with(tmp_path, {"x": ""})
    with pytest.raises(api.PluginError, match="unknown hook 'on_gpu_detect'"):
        m.invoke_hook("on_gpu_detect", None)
    with pytest.raises(api.PluginError, match="unknown hook"):
        m.invoke_hook_mut("on_vm_start", api.VmConfig("vm"))


def test_a_permission_error_is_reported_as_such(tmp_path):
    body = "def on_system_detected(self, ctx, system):\n    ctx.system_info()"
    m = manager_with(tmp_path, {"nosys": body}, services={"system_info": api.SystemInfo(distribution="x")})
    failures = m.invoke_hook("on_system_detected", api.SystemInfo())
    assert failures[0].kind == "permission"
    assert "PermissionDenied: plugin 'nosys' needs the 'system:read' permission" in failures[0].error


# ---- the mutating hook -----------------------------------------------------------------------

MUT_CLEAN = """
def on_pre_vm_start(self, ctx, vm_config):
    vm_config.memory_mib = 8192
    vm_config.add_vendor_id("exliar")
"""
MUT_RAISER = """
def on_pre_vm_start(self, ctx, vm_config):
    vm_config.vcpus = 99
    vm_config.add_kvm_hidden()
    raise RuntimeError("half done")
"""
MUT_OBSERVER = """
def on_pre_vm_start(self, ctx, vm_config):
    ctx.set("saw", (vm_config.memory_mib, vm_config.vcpus, dict(vm_config.features)))
    vm_config.add_hypervisor_hidden()
"""


def test_invoke_hook_mut_keeps_clean_changes_and_discards_a_raising_plugins_half_done_change(tmp_path):
    vm = {"permissions": ["vm:modify"]}
    m = manager_with(tmp_path, {"a-clean": (MUT_CLEAN, vm), "b-raiser": (MUT_RAISER, vm), "c-observer": (MUT_OBSERVER, vm)})
    original = api.VmConfig("win10", memory_mib=4096, vcpus=4)
    result = m.invoke_hook_mut("on_pre_vm_start", original)
    assert (result.memory_mib, result.vcpus) == (8192, 4)
    assert result.features == {"vendor_id": "exliar", "hypervisor_hidden": True}
    assert m.contexts["c-observer"].get("saw") == (8192, 4, {"vendor_id": "exliar"})
    assert [(f.plugin, f.error) for f in m.failures] == [("b-raiser", "RuntimeError: half done")]
    assert (original.memory_mib, original.vcpus, original.features) == (4096, 4, {})


def test_invoke_hook_mut_discards_the_change_of_a_plugin_that_times_out(tmp_path):
    body = """
    def on_pre_vm_start(self, ctx, vm_config):
        vm_config.vcpus = 64
        import time
        time.sleep(1)
    """
    m = manager_with(tmp_path, {"slow": (body, {"timeout": 0.2, "permissions": ["vm:modify"]})})
    result = m.invoke_hook_mut("on_pre_vm_start", api.VmConfig("vm", vcpus=2))
    assert result.vcpus == 2
    assert m.failures[0].kind == "timeout"


def test_invoke_hook_mut_discards_a_change_made_without_vm_modify(tmp_path):
    m = manager_with(tmp_path, {"a-sneaky": MUT_CLEAN, "b-allowed": (MUT_OBSERVER, {"permissions": ["vm:modify"]}),
                                "c-reader": "def on_pre_vm_start(self, ctx, vm_config):\n    ctx.set('name', vm_config.name)"})
    result = m.invoke_hook_mut("on_pre_vm_start", api.VmConfig("vm"))
    assert (result.memory_mib, result.features) == (4096, {"hypervisor_hidden": True})
    assert m.contexts["b-allowed"].get("saw") == (4096, 4, {})
    assert m.contexts["c-reader"].get("name") == "vm", "looking without changing needs no permission"
    assert [(f.plugin, f.kind) for f in m.failures] == [("a-sneaky", "permission")]
    assert "without the 'vm:modify' permission; the change was discarded" in m.failures[0].error


# ---- timeouts and critical plugins -------------------------------------------------------------

SLEEPER = """
def on_device_enumeration(self, ctx, devices):
    import time
    time.sleep(2)
"""


def test_a_hook_that_overruns_its_timeout_is_abandoned_and_reported(tmp_path):
    m = manager_with(tmp_path, {"a-slow": (SLEEPER, {"timeout": 0.3}),
                                "b-next": "def on_device_enumeration(self, ctx, devices):\n    ctx.set('ran', True)"})
    start = time.monotonic()
    failures = m.invoke_hook("on_device_enumeration", [])
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, "the manager must not wait for the hook to finish"
    assert [(f.plugin, f.hook, f.kind, f.error) for f in failures] == [
        ("a-slow", "on_device_enumeration", "timeout", "did not return within 0.3 s")]
    assert m.contexts["b-next"].get("ran") is True
    slow = [c for c in m.calls if c.plugin == "a-slow"][0]
    assert not slow.ok and 250 <= slow.ms < 1500


def test_a_critical_plugin_that_raises_stops_the_stage(tmp_path):
    m = manager_with(tmp_path, {
        "a-crit": ("def on_gpu_detected(self, ctx, gpu):\n    raise ValueError('bad gpu')", {"critical": True}),
        "b-after": RECORD,
    })
    with pytest.raises(CriticalPluginFailure) as info:
        m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0"))
    assert str(info.value) == "critical plugin a-crit failed in on_gpu_detected: ValueError: bad gpu"
    assert (info.value.plugin, info.value.hook) == ("a-crit", "on_gpu_detected")
    assert isinstance(info.value, api.PluginError)
    assert m.failures[0].critical is True
    assert not [c for c in m.calls if c.plugin == "b-after"]


def test_a_critical_plugin_that_times_out_stops_the_stage(tmp_path):
    m = manager_with(tmp_path, {"crit-slow": (SLEEPER, {"critical": True, "timeout": 0.2})})
    with pytest.raises(CriticalPluginFailure, match="critical plugin crit-slow failed in on_device_enumeration: "
                                                    "did not return within 0.2 s"):
        m.invoke_hook("on_device_enumeration", [])


def test_a_non_critical_failure_never_raises(tmp_path):
    m = manager_with(tmp_path, {"meh": "def on_load(self, ctx):\n    raise SystemExit(3)"})
    m.start()
    assert m.failures[0].error == "SystemExit: 3"


# ---- enable, disable, unload -------------------------------------------------------------------

def test_a_plugin_disabled_in_the_configuration_is_not_called(tmp_path):
    m = manager_with(tmp_path, {"off": RECORD, "on": RECORD}, config={"off": {"enabled": False}})
    m.start()
    m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0"))
    m.finish()
    assert {c.plugin for c in m.calls} == {"on"}
    assert "off" not in m.plugins and "off" not in m.contexts, "a disabled plugin's code is not even imported"
    assert [(x.name, x.enabled) for x in m.list_plugins()] == [("off", False), ("on", True)]


def test_disable_and_enable_at_run_time(tmp_path):
    m = manager_with(tmp_path, {"toggle": RECORD})
    m.start()
    m.disable_plugin("toggle")
    m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0"))
    assert m.contexts["toggle"].get("seen") == []
    assert m.meta["toggle"].enabled is False
    m.enable_plugin("toggle")
    m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:02:00.0"))
    assert m.contexts["toggle"].get("seen") == [("on_gpu_detected", "0000:02:00.0")]
    with pytest.raises(api.PluginError, match="no plugin named ghost"):
        m.disable_plugin("ghost")


def test_a_disabled_plugin_receives_no_events(tmp_path):
    listener = """
    def on_load(self, ctx):
        ctx.subscribe(api.Event, self.on_any)
        self.got = []

    def on_any(self, event):
        self.got.append(event.event_type)
    """
    m = manager_with(tmp_path, {"ear": (listener, {"permissions": ["events"]}),
                                "mouth": ("", {"permissions": ["events"]})})
    m.start()
    m.contexts["mouth"].emit(api.Event())
    m.disable_plugin("ear")
    m.contexts["mouth"].emit(api.Event())
    assert m.get_plugin("ear").got == ["event"]


LISTENER = """
def on_load(self, ctx):
    ctx.subscribe(api.Event, self.on_any)

def on_any(self, event):
    raise RuntimeError("listener broke")
"""
EMITTER = "def on_gpu_detected(self, ctx, gpu):\n    ctx.emit(api.Event())\n    ctx.set('emitted', True)"


def test_a_raising_event_handler_is_reported_and_the_emitter_goes_on(tmp_path):
    ev = {"permissions": ["events"]}
    m = manager_with(tmp_path, {"a-emitter": (EMITTER, ev), "b-listener": (LISTENER, ev)})
    m.start()
    assert m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0")) == []
    assert m.contexts["a-emitter"].get("emitted") is True
    assert [(f.plugin, f.hook, f.error) for f in m.failures] == [("b-listener", "event:Event", "RuntimeError: listener broke")]


def test_a_critical_plugins_failing_event_handler_fails_the_host(tmp_path):
    ev = {"permissions": ["events"]}
    m = manager_with(tmp_path, {"a-emitter": (EMITTER, ev), "b-listener": (LISTENER, dict(ev, critical=True))})
    m.start()
    with pytest.raises(CriticalPluginFailure, match="critical plugin b-listener failed in event:Event"):
        m.invoke_hook("on_gpu_detected", api.GpuDevice("0000:01:00.0"))


def test_unload_calls_on_unload_and_forgets_the_plugin(tmp_path):
    body = RECORD + """
def on_cleanup(self, ctx):
    pass
"""
    m = manager_with(tmp_path, {"gone": (body + "\ndef on_event(self, event):\n    self.events += 1",
                                         {"permissions": ["events"]})})
    m.start()
    inst = m.get_plugin("gone")
    inst.events = 0
    ctx = m.contexts["gone"]
    ctx.subscribe(api.Event, inst.on_event)
    m.unload_plugin("gone")
    assert ctx.get("seen") == [("on_unload", None)]
    assert [c.hook for c in m.calls] == ["on_load", "on_unload"]
    assert m.get_plugin("gone") is None and "gone" not in m.contexts
    assert m.active("on_gpu_detected") == [] and m.active("on_cleanup") == []
    assert m.bus.emit("other", api.Event()) == 0 and inst.events == 0
    with pytest.raises(api.PluginError, match="plugin gone is not loaded"):
        m.unload_plugin("gone")


def test_finish_runs_cleanup_in_load_order_then_unload_in_reverse(tmp_path):
    body = """
    def on_cleanup(self, ctx):
        pass

    def on_unload(self, ctx):
        pass
    """
    m = manager_with(tmp_path, {"first": body, "second": (body, {"deps": {"first": ""}})})
    m.finish()
    assert [(c.plugin, c.hook) for c in m.calls] == [
        ("first", "on_cleanup"), ("second", "on_cleanup"), ("second", "on_unload"), ("first", "on_unload")]


def test_start_registers_panels_and_commands(tmp_path):
    body = """
    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("main", "Main panel", lambda ctx: "text")

    def register_commands(self, ctx, command_registry):
        command_registry.register_command("do-it", "Does it", lambda args, ctx: "done")
    """
    m = manager_with(tmp_path, {"ui": (body, {"permissions": ["ui", "commands"]})})
    m.start()
    assert list(m.panels) == ["ui:main"] and m.panels["ui:main"].plugin == "ui"
    assert list(m.commands) == ["do-it"] and m.commands["do-it"].handler([], None) == "done"


def test_start_follows_the_lifecycle_order(tmp_path):
    body = """
    def on_load(self, ctx):
        pass

    def register_ui_elements(self, ctx, ui_registry):
        pass

    def register_commands(self, ctx, command_registry):
        pass
    """
    m = manager_with(tmp_path, {"order": body})
    m.start()
    hooks = [c.hook for c in m.calls]
    assert hooks == sorted(hooks, key=api.LIFECYCLE.index)


def test_registering_without_the_ui_or_commands_permission_is_a_permission_failure(tmp_path):
    body = """
    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("main", "Main panel", str)

    def register_commands(self, ctx, command_registry):
        command_registry.register_command("go", "Go", str)
    """
    m = manager_with(tmp_path, {"noperm": body})
    m.start()
    assert m.panels == {} and m.commands == {}
    assert sorted((f.hook, f.kind) for f in m.failures) == [("register_commands", "permission"),
                                                            ("register_ui_elements", "permission")]


def test_a_plugin_may_not_register_the_same_panel_twice(tmp_path):
    body = """
    def register_ui_elements(self, ctx, ui_registry):
        ui_registry.register_panel("p", "P", str)
        ui_registry.register_panel("p", "P again", str)
    """
    m = manager_with(tmp_path, {"dup": (body, {"permissions": ["ui"]})})
    m.start()
    assert m.failures[0].hook == "register_ui_elements"
    assert "panel 'p' is already registered" in m.failures[0].error


def test_hooks_may_name_their_first_parameter_anything():
    from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import _call  # noqa: PLC0415

    class Odd:
        def takes_both(this, ctx, arg):  # pylint: disable=no-self-argument  # the point of the test
            return (ctx, arg)

        def takes_ctx(self, ctx):
            return ctx

    odd = Odd()
    assert _call(odd.takes_both, "ctx", "arg") == ("ctx", "arg")
    assert _call(odd.takes_ctx, "ctx", "arg") == "ctx"
