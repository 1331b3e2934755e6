"""Which host functions a ``vfio_vms`` entry receives: references to the binding stage's selection."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils._vm_config import VmSpecError, resolve_devices

# the binding plan of a host with a GPU slot (GPU, HDMI audio, USB) and a second card's GPU function
PLAN = {"devices": [{"address": a} for a in ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:05:00.0")]}


def test_a_gpu_address_brings_the_selected_functions_of_its_slot():
    assert resolve_devices("vm", ["0000:01:00.0"], PLAN) == ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"]


def test_addresses_are_written_as_lspci_prints_them_or_short_or_upper_case():
    assert resolve_devices("vm", ["05:00.0"], PLAN) == ["0000:05:00.0"]
    assert resolve_devices("vm", [{"address": "0000:01:00.1".upper()}], PLAN)[0] == "0000:01:00.0"


def test_all_takes_the_whole_selection_and_nothing_takes_none():
    assert resolve_devices("vm", "all", PLAN) == sorted(d["address"] for d in PLAN["devices"])
    assert resolve_devices("vm", [], PLAN) == []


@pytest.mark.parametrize("ref", ["0000:01:20.0", "01:00.8", "gpu0", 7])
def test_a_reference_that_is_no_pci_address_is_refused(ref):
    with pytest.raises(VmSpecError, match=r"VM vm: devices entry 1 .* is not a PCI address like 0000:01:00.0 or 'all'"):
        resolve_devices("vm", [ref], PLAN)


def test_an_address_the_binding_stage_did_not_select_is_refused_with_what_to_do():
    with pytest.raises(VmSpecError, match=r"0000:09:00.0 is not among the devices the binding stage selected .* add it to vfio_devices"):
        resolve_devices("vm", ["09:00.0"], PLAN)


def test_devices_without_any_selection_say_to_select_them_first():
    with pytest.raises(VmSpecError, match="select them with vfio_devices first"):
        resolve_devices("vm", ["0000:01:00.0"], {"devices": []})
