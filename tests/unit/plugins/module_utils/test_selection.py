"""vfio_devices: entries, address and id normalisation, each selector and exclusion, over facts of real sysroots."""
from __future__ import annotations

import pytest

from build_sysroot import PROFILE_DIR, build
from helpers import INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, NVIDIA_UCSI, NVIDIA_USB, NVME, ROOT_PORT, by_address

from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.module_utils._selection import (
    SelectionError, match, normalize_address, normalize_id, parse_entries,
)

_LAB_CACHE: dict = {}


@pytest.fixture(scope="session")
def lab_facts(sysroot_base):
    """``lab_facts(profile id)`` -> gather_facts() of that lab profile's sysroot (built once; READ ONLY)."""

    def get(pid: str) -> dict:
        if pid not in _LAB_CACHE:
            root = build(PROFILE_DIR / f"{pid}.yml", sysroot_base / "lab-selection")
            _LAB_CACHE[pid] = gather_facts(str(root))
        return _LAB_CACHE[pid]

    return get


def select(facts: dict, entries) -> dict:
    return match(facts, parse_entries(entries))


# ---- addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("01:00.0", "0000:01:00.0"),
    ("0000:01:00.0", "0000:01:00.0"),
    ("0A:00.1", "0000:0a:00.1"),
    ("0000:0A:1F.7", "0000:0a:1f.7"),
    ("ABCD:e1:00.0", "abcd:e1:00.0"),
    ("10000:E1:00.0", "10000:e1:00.0"),   # a VMD domain has more than four digits
    ("  0000:01:00.0\n", "0000:01:00.0"),
])
def test_address_is_normalised(text, want):
    assert normalize_address(text) == want


@pytest.mark.parametrize("text", [
    "1:00.0", "0000:1:00.0", "0000:01:00.8", "0000:01:20.0", "0000:001:00.0", "0000:01:00", "01.00.0",
    "0000-01-00.0", "", "gpu", "0000:01:00.0.1", None, 100, ["0000:01:00.0"],
])
def test_a_malformed_address_is_an_error_that_shows_the_form(text):
    with pytest.raises(SelectionError) as exc:
        normalize_address(text)
    msg = str(exc.value)
    assert repr(text) in msg
    assert "domain:bus:device.function" in msg and "0000:01:00.0" in msg and "lspci -D" in msg


@pytest.mark.parametrize("text, want", [("10de:1e87", "10de:1e87"), ("10DE:1E87", "10de:1e87"), (" 1002:73Bf ", "1002:73bf")])
def test_id_is_normalised(text, want):
    assert normalize_id(text) == want


@pytest.mark.parametrize("text", ["10de-1e87", "10de:1e8", "10de:1e877", "0x10de:0x1e87", "g0de:1e87", "10de", "", None, 0x10DE])
def test_a_malformed_id_is_an_error_that_shows_the_form(text):
    with pytest.raises(SelectionError) as exc:
        normalize_id(text)
    msg = str(exc.value)
    assert repr(text) in msg and "vendor:device" in msg and "lspci -nn" in msg


# ---- entries --------------------------------------------------------------------------------

def test_entries_are_parsed_into_one_selector_each():
    parsed = parse_entries([
        "01:00.0",
        {"address": "0000:02:00.0"},
        {"id": "10DE:10F8"},
        {"name": "*RTX 2080*"},
        {"gpus": "discrete_except_boot"},
        {"address": "0000:00:1F.6", "exclude": True},
        {"id": "144d:a808", "exclude": False},
    ])
    assert [(e["n"], e["key"], e["value"], e["exclude"]) for e in parsed] == [
        (1, "address", "0000:01:00.0", False),
        (2, "address", "0000:02:00.0", False),
        (3, "id", "10de:10f8", False),
        (4, "name", "*RTX 2080*", False),
        (5, "gpus", "discrete_except_boot", False),
        (6, "address", "0000:00:1f.6", True),
        (7, "id", "144d:a808", False),
    ]


def test_no_entries_is_an_empty_selection():
    assert parse_entries(None) == [] and parse_entries([]) == []


@pytest.mark.parametrize("entries, needles", [
    ("0000:01:00.0", ["must be a list"]),
    ({"address": "0000:01:00.0"}, ["must be a list"]),
    (["0000:01:00.0", 42], ["entry 2", "42", "neither an address nor a mapping"]),
    ([{"adress": "0000:01:00.0"}], ["entry 1", "unknown key(s) adress", "address, id, name, gpus"]),
    ([{"address": "0000:01:00.0", "id": "10de:1e87"}], ["entry 1", "exactly one of", "found address, id", "split it"]),
    (["01:00.0", {"name": "*GTX*", "gpus": "discrete_except_boot"}], ["entry 2", "found name, gpus"]),
    ([{"exclude": True}], ["entry 1", "found none"]),
    ([{"address": "0000:01:00.0", "exclude": "yes"}], ["entry 1", "exclude must be true or false"]),
    ([{"name": ""}], ["entry 1", "non-empty pattern"]),
    ([{"name": 3090}], ["entry 1", "non-empty pattern"]),
    ([{"gpus": "all"}], ["entry 1", "'all' is not known", "discrete_except_boot"]),
    ([{"address": "1:0.0"}], ["'1:0.0' is not a PCI address"]),
    ([{"id": "10de:1e8"}], ["'10de:1e8' is not a vendor:device id"]),
])
def test_bad_entries_are_errors_naming_the_entry(entries, needles):
    with pytest.raises(SelectionError) as exc:
        parse_entries(entries)
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))


# ---- selectors over the unit desktop (names from helpers.PCI_IDS) ---------------------------

@pytest.mark.parametrize("entry", ["01:00.0", "0000:01:00.0", {"address": "01:00.0"}, {"address": "0000:01:00.0"}])
def test_by_address(desktop_facts, entry):
    found = select(desktop_facts, [entry])
    assert found == {"selected": [NVIDIA_GPU], "excluded": [], "missing": [], "errors": [], "empty_entries": []}


def test_by_address_in_uppercase_on_a_real_machine(lab_facts):
    found = select(lab_facts("dual-identical-gt710-fedora"), [{"address": "0000:0A:00.0"}, "0A:00.1"])
    assert found["selected"] == ["0000:0a:00.0", "0000:0a:00.1"] and not found["errors"]


def test_by_id_any_case(desktop_facts):
    assert select(desktop_facts, [{"id": "10DE:10F8"}])["selected"] == [NVIDIA_AUDIO]


def test_by_id_takes_every_device_with_that_id(lab_facts):
    found = select(lab_facts("dual-identical-gtx480-debian"), [{"id": "10de:06c0"}])
    assert found["selected"] == ["0000:01:00.0", "0000:02:00.0"]


@pytest.mark.parametrize("pattern, want", [
    ("*RTX 2080*", [NVIDIA_GPU]),                                # a part of the device name
    ("*rtx 2080*", [NVIDIA_GPU]),                                # case-insensitive
    ("*GEFORCE*", [NVIDIA_GPU]),
    ("TU104 HD*", [NVIDIA_AUDIO]),                               # the device name alone
    ("nvidia corporation tu104*", [NVIDIA_GPU, NVIDIA_AUDIO]),    # vendor and device name together
    ("NVIDIA*", [NVIDIA_GPU, NVIDIA_AUDIO, NVIDIA_USB, NVIDIA_UCSI]),
    ("samsung*pm98?", [NVME]),
])
def test_by_name_glob(desktop_facts, pattern, want):
    found = select(desktop_facts, [{"name": pattern}])
    assert sorted(found["selected"]) == sorted(want) and found["empty_entries"] == []


def test_by_name_never_selects_a_bridge(desktop_facts):
    devs = by_address(desktop_facts["pci_devices"])
    bridges = [a for a, d in devs.items() if d["is_bridge"]]
    assert ROOT_PORT in bridges and all(devs[a]["vendor_name"] == "Intel Corporation" for a in bridges)  # the pattern fits them
    found = select(desktop_facts, [{"name": "intel*"}])
    assert sorted(found["selected"]) == sorted([INTEL_IGPU, "0000:00:14.0", "0000:00:1f.6"])
    assert not set(found["selected"]) & set(bridges) and not found["errors"]


def test_by_name_skips_the_switch_ports_named_like_the_amd_card(lab_facts):
    facts = lab_facts("b550-navi21-split-audio")
    devs = by_address(facts["pci_devices"])
    ports = ["0000:06:00.0", "0000:07:00.0"]  # Navi 10 XL upstream/downstream port: class 0604, vendor AMD/ATI
    if not all(devs[p]["vendor_name"] for p in ports):
        pytest.skip("the lab was built without a pci.ids database: no names")
    assert all(devs[p]["is_bridge"] and devs[p]["vendor_name"].startswith("Advanced Micro Devices") for p in ports)
    found = select(facts, [{"name": "advanced micro devices*"}])
    assert "0000:08:00.0" in found["selected"] and "0000:08:00.1" in found["selected"]
    assert not set(found["selected"]) & set(ports)


@pytest.mark.parametrize("pid, want", [
    ("dual-identical-gtx480-debian", ["0000:02:00.0"]),        # the boot card stays
    ("apu-amd-dgpu-split-audio", ["0000:03:00.0"]),            # the APU's iGPU is integrated
    ("server-bmc-vga", ["0000:03:00.0", "0000:09:00.0"]),      # the BMC's VGA and the iGPU stay
    ("b550-navi21-split-audio", ["0000:08:00.0"]),
])
def test_discrete_except_boot(lab_facts, pid, want):
    found = select(lab_facts(pid), [{"gpus": "discrete_except_boot"}])
    assert found["selected"] == want and not found["errors"] and found["empty_entries"] == []


def test_discrete_except_boot_on_the_unit_desktop(desktop_facts):
    assert select(desktop_facts, [{"gpus": "discrete_except_boot"}])["selected"] == [NVIDIA_GPU]  # never the companions


@pytest.mark.parametrize("pid", ["single-gpu-desktop", "server-bmc-only"])
def test_discrete_except_boot_on_a_host_without_one_matches_nothing(lab_facts, pid):
    found = select(lab_facts(pid), [{"gpus": "discrete_except_boot"}])
    assert found["selected"] == [] and found["empty_entries"] == [1]


# ---- exclude, missing, empty, errors -------------------------------------------------------

def test_exclude_removes_what_another_entry_selects(lab_facts):
    facts = lab_facts("dual-identical-gtx480-debian")
    found = select(facts, [{"id": "10de:06c0"}, {"address": "01:00.0", "exclude": True}])
    assert found["selected"] == ["0000:02:00.0"] and found["excluded"] == ["0000:01:00.0"] and not found["errors"]


def test_exclude_wins_whatever_the_order(desktop_facts):
    found = select(desktop_facts, [{"name": "NVIDIA*", "exclude": True}, {"gpus": "discrete_except_boot"}])
    assert found["selected"] == [] and NVIDIA_GPU in found["excluded"] and not found["errors"]


def test_an_address_the_host_lacks_is_missing(desktop_facts):
    found = select(desktop_facts, ["0000:09:00.0", "01:00.0"])
    assert found["missing"] == ["0000:09:00.0"] and found["selected"] == [NVIDIA_GPU] and not found["errors"]


def test_entries_that_match_nothing_are_reported_by_number(desktop_facts):
    found = select(desktop_facts, ["01:00.0", {"id": "dead:beef"}, {"name": "*Radeon*"}])
    assert found["empty_entries"] == [2, 3] and found["selected"] == [NVIDIA_GPU]


def test_a_bridge_by_address_is_an_error(desktop_facts):
    found = select(desktop_facts, ["01:00.0", {"address": "0000:00:01.0"}])
    assert found["selected"] == [NVIDIA_GPU]
    [msg] = found["errors"]
    assert "entry 2" in msg and "0000:00:01.0 is a PCI bridge" in msg and "select the devices behind it" in msg


def test_a_host_bridge_by_address_is_an_error_too(lab_facts):
    [msg] = select(lab_facts("gpu-nvme-shared-group"), ["0000:00:01.1"])["errors"]
    assert "0000:00:01.1 is a PCI bridge" in msg


def test_one_address_selected_and_excluded_is_a_conflict(desktop_facts):
    found = select(desktop_facts, ["01:00.0", {"address": "0000:01:00.0", "exclude": True}])
    [msg] = found["errors"]
    assert "entries 1 and 2 conflict" in msg and "0000:01:00.0 is both selected and excluded" in msg
