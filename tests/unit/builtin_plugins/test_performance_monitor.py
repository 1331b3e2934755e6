"""performance-monitor, loaded through vfio_builtin_plugins: asks for sampling, sums a VM run up, shows a panel."""
from __future__ import annotations

import pickle

from builtin_helpers import vm_shutdown, vm_stage

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as store
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import finish_run

GPU = "0000:01:00.0"
SAMPLES = [  # given out of order: the plugin sorts by t
    {"t": 2.0, "cpu_seconds": 5.0, "rss_mib": 4200.5, "gpu_busy": {GPU: 60}},
    {"t": 0.0, "cpu_seconds": 1.0, "rss_mib": 4100.0, "gpu_busy": {GPU: 20}},
    {"t": 1.0, "cpu_seconds": 3.5, "rss_mib": 4300.0, "gpu_busy": {GPU: 40}},
    {"t": 4.0, "cpu_seconds": 9.0, "rss_mib": 4250.0},
]


def storage(rdir) -> dict:
    return {k: pickle.loads(v) for k, v in store.load_host_state(rdir, "h1")["storage"]["performance-monitor"].items()}


def messages(rdir) -> list:
    return [(r["level"], r["message"]) for r in store.load_host_state(rdir, "h1")["log"] if r["plugin"] == "performance-monitor"]


def test_it_asks_the_vm_stage_for_samples_at_the_configured_interval(host_vars, tmp_path):
    task_vars = host_vars(["performance-monitor"], {"performance-monitor": {"interval_seconds": "0.5"}})
    result, (out,) = vm_stage(task_vars, {}, [api.VmConfig("win11")])
    assert result["vfio_plugins"]["failures"] == []
    assert out.monitor == {"interval_seconds": 0.5}
    assert isinstance(storage(tmp_path / "run")["perf_win11_started"], float)
    _result, (default,) = vm_stage(host_vars(["performance-monitor"]), {}, [api.VmConfig("other")])
    assert default.monitor == {"interval_seconds": 1.0}


def test_a_bad_interval_fails_the_hook_and_asks_for_nothing(host_vars):
    result, (out,) = vm_stage(host_vars(["performance-monitor"], {"performance-monitor": {"interval_seconds": 0}}),
                              {}, [api.VmConfig("vm")])
    assert "interval_seconds must be between 0.1 and 3600" in result["vfio_plugins"]["failures"][0]["error"]
    assert out.monitor == {}


def test_the_figures_of_a_run_from_its_samples_and_the_panel(host_vars, tmp_path):
    task_vars = host_vars(["performance-monitor"])
    vm_stage(task_vars, {}, [api.VmConfig("win11")])
    stats = api.VmStats("win11", runtime_seconds=4.2, cpu_time_seconds=9.0, max_memory_mib=4000.0,
                        samples=SAMPLES, shutdown="shutdown")
    result = vm_shutdown(task_vars, {}, [stats])
    assert result["vfio_plugins"]["failures"] == []
    figures = storage(tmp_path / "run")["perf_win11"]
    assert figures == {"runtime_seconds": 4.2, "cpu_percent": 200.0, "gpu_percent": 40.0,
                       "gpu_percent_by_device": {GPU: 40.0}, "max_memory_mib": 4300.0, "samples": 4,
                       "shutdown": "shutdown"}, "CPU: (9 - 1) s over 4 s = 200 % (two busy vCPUs)"
    assert "perf_win11_started" not in storage(tmp_path / "run")
    assert ("info", "VM Performance: Runtime: 4s, Avg GPU Usage: 40.0%, Avg CPU: 200.0%, Max Memory: 4300MB "
                    "(VM win11)") in messages(tmp_path / "run")
    panels = dict(finish_run(tmp_path / "run")["h1"]["panels"])
    assert panels == {"Performance": {"win11": "Runtime: 4s, Avg GPU Usage: 40.0%, Avg CPU: 200.0%, Max Memory: 4300MB, "
                                               "4 samples, ended: shutdown"}}


def test_without_samples_the_totals_are_used_and_gpu_is_unknown(host_vars, tmp_path):
    task_vars = host_vars(["performance-monitor"])
    vm_shutdown(task_vars, {}, [api.VmStats("vm", runtime_seconds=10.0, cpu_time_seconds=5.0, max_memory_mib=2048.0)])
    figures = storage(tmp_path / "run")["perf_vm"]
    assert (figures["cpu_percent"], figures["gpu_percent"], figures["max_memory_mib"]) == (50.0, None, 2048.0)
    assert messages(tmp_path / "run") == [
        ("warning", "VM vm: the VM stage returned no samples; the figures come from its totals"),
        ("info", "VM Performance: Runtime: 10s, Avg GPU Usage: n/a, Avg CPU: 50.0%, Max Memory: 2048MB (VM vm)")]


def test_the_panel_without_a_vm_run(host_vars, tmp_path):
    vm_stage(host_vars(["performance-monitor"]), {}, [])
    assert dict(finish_run(tmp_path / "run")["h1"]["panels"]) == {"Performance": "No VM run was measured."}
