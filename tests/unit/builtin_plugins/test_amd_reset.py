"""amd-reset, loaded through vfio_builtin_plugins: flags AMD GPUs of vendor-reset's device table and reads,
on the host (a sysroot here, through ``ctx.target()``), what is left to do."""
from __future__ import annotations

import pickle

import pytest

import helpers
from builtin_helpers import LocalShell

from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as store
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import run_stage_hooks
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import finish_run

NAVI10, NAVI21 = "0000:01:00.0", "0000:03:00.0"
KERNEL = helpers.BASE["os"]["kernel"]
ECHO = f"echo device_specific > /sys/bus/pci/devices/{NAVI10}/reset_method"


def amd_host(make_sysroot, reset, module=None):
    """A desktop with an RX 5700 XT (Navi 10, 1002:731f) and an RX 6800 (Navi 21, 1002:73bf; it resets fine).
    ``module``: None (vendor-reset absent), ``installed`` (for the running kernel) or ``loaded``."""
    root_port2 = {"address": "0000:00:1c.0", "id": "8086:a33c", "class": "060400", "driver": "pcieport", "group": 6}
    pci = [d for d in helpers.DESKTOP_PCI if d["address"] in ("0000:00:00.0", helpers.ROOT_PORT, helpers.INTEL_IGPU)] + [
        {"address": NAVI10, "id": "1002:731f", "class": "030000", "parent": helpers.ROOT_PORT, "driver": "vfio-pci",
         "group": 1, "reset": reset},
        {"address": "0000:01:00.1", "id": "1002:ab38", "class": "040300", "parent": helpers.ROOT_PORT, "driver": "vfio-pci",
         "group": 1},
        root_port2,
        {"address": NAVI21, "id": "1002:73bf", "class": "030000", "parent": "0000:00:1c.0", "driver": "amdgpu", "group": 6,
         "reset": ["flr", "bus"]},
    ]
    root = make_sysroot(pci=pci)
    if module:
        dep = root / "lib" / "modules" / KERNEL / "modules.dep"
        dep.write_text(dep.read_text() + "updates/dkms/vendor-reset.ko.xz:\n")
    if module == "loaded":
        helpers.write(root, "sys/module/vendor_reset/initstate", "live\n")
    return gather_facts(str(root), with_names=False)


def detect(task_vars, facts):
    return run_stage_hooks({}, task_vars, "detection", facts, action=LocalShell())


def stored(rdir):
    return {k: pickle.loads(v) for k, v in store.load_host_state(rdir, "h1")["storage"]["amd-reset"].items()}


@pytest.mark.parametrize("reset, module, status, expected", [
    (["device_specific"], "loaded", "ok", ["vendor-reset is loaded and the kernel resets 0000:01:00.0 with it"]),
    (["flr", "bus"], "loaded", "action", ["vendor-reset is loaded, but the kernel resets 0000:01:00.0 with flr then bus",
                                          ECHO]),
    (["bus"], "installed", "action", ["load it early at boot", "/etc/modules-load.d/vendor-reset.conf", ECHO]),
    (["bus"], None, "action", ["install vendor-reset (https://github.com/gnif/vendor-reset", "load it early", ECHO]),
], ids=["loaded-and-used", "loaded-not-used", "installed-not-loaded", "absent"])
def test_a_navi10_is_flagged_with_the_advice_its_host_needs(host_vars, make_sysroot, tmp_path, reset, module, status, expected):
    facts = amd_host(make_sysroot, reset, module)
    result = detect(host_vars(["amd-reset"]), facts)
    assert result["vfio_plugins"]["failures"] == []
    st = stored(tmp_path / "run")
    assert st["flagged"] == [NAVI10], "the Navi 21 resets fine and the iGPU is Intel's"
    found = st[f"amd_reset_{NAVI10}"]
    assert (found["family"], found["device_id"], found["reset_methods"]) == ("Navi 10", "731f", reset)
    assert found["vendor_reset"] == (module or "missing")
    assert found["status"] == status
    advice = " ".join(found["advice"])
    for text in expected:
        assert text in advice
    if module != "loaded":
        assert "install vendor-reset" in advice if module is None else "install vendor-reset" not in advice
    (log,) = [r for r in store.load_host_state(tmp_path / "run", "h1")["log"] if r["plugin"] == "amd-reset"]
    assert log["level"] == ("info" if status == "ok" else "warning")
    assert log["message"].startswith(f"AMD Navi 10 GPU 1002:731f at {NAVI10} has the AMD reset bug: ")


def test_the_panel_lists_the_flagged_gpus(host_vars, make_sysroot, tmp_path):
    facts = amd_host(make_sysroot, ["bus"], "installed")
    detect(host_vars(["amd-reset"]), facts)
    ((title, content),) = finish_run(tmp_path / "run")["h1"]["panels"]
    assert title == "AMD GPU reset"
    assert list(content) == [NAVI10]
    assert content[NAVI10].startswith("Navi 10 (1002:731f), vendor-reset installed, reset_method bus: action; load it early")


def test_no_flagged_gpu_no_round_trip(host_vars, desktop_facts, tmp_path):
    result = detect(host_vars(["amd-reset"]), desktop_facts)
    assert result["vfio_plugins"]["failures"] == []
    assert stored(tmp_path / "run") == {}
    ((_title, content),) = finish_run(tmp_path / "run")["h1"]["panels"]
    assert content == "No AMD GPU with the reset bug was found."


def test_without_access_to_the_host_the_advice_says_it_could_not_check(host_vars, make_sysroot, tmp_path):
    facts = amd_host(make_sysroot, ["bus"], "loaded")
    run_stage_hooks({}, host_vars(["amd-reset"]), "detection", facts)  # no action: the stage gives no target
    found = stored(tmp_path / "run")[f"amd_reset_{NAVI10}"]
    # reset_method comes with the facts; whether vendor-reset is there needs the host
    assert (found["vendor_reset"], found["status"], found["reset_methods"]) == ("unknown", "unknown", ["bus"])
    assert "it could not be checked" in found["advice"][0]
