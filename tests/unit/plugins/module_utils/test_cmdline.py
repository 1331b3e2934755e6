"""Kernel command line parsing: order, duplicates, quoting, and the kernel's name rules."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import (
    has_flag, last_value, param_values, parse_cmdline, split_cmdline,
)

DEBIAN = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0c6d7b2a-1111 ro quiet intel_iommu=on iommu=pt\n"


def test_parameters_in_order_with_values_and_flags():
    assert parse_cmdline(DEBIAN) == [
        {"name": "BOOT_IMAGE", "value": "/boot/vmlinuz-6.1.0-18-amd64"},
        {"name": "root", "value": "UUID=0c6d7b2a-1111"},
        {"name": "ro", "value": None},
        {"name": "quiet", "value": None},
        {"name": "intel_iommu", "value": "on"},
        {"name": "iommu", "value": "pt"},
    ]


def test_duplicates_are_kept_in_order():
    params = parse_cmdline("intel_iommu=on quiet intel_iommu=off")
    assert [p["value"] for p in params if p["name"] == "intel_iommu"] == ["on", "off"]
    assert param_values(params, "intel_iommu") == ["on", "off"]
    assert last_value(params, "intel_iommu") == "off"


def test_double_quotes_group_spaces_and_are_removed_from_the_value():
    params = parse_cmdline('root=/dev/sda1 dyndbg="file vfio_pci_core.c +p" quiet')
    assert params == [
        {"name": "root", "value": "/dev/sda1"},
        {"name": "dyndbg", "value": "file vfio_pci_core.c +p"},
        {"name": "quiet", "value": None},
    ]


def test_a_whole_quoted_parameter():
    assert parse_cmdline('"acpi_osi=Windows 2020" ro') == [
        {"name": "acpi_osi", "value": "Windows 2020"}, {"name": "ro", "value": None}]


def test_split_keeps_quotes_in_words():
    assert split_cmdline('a="b c" d') == ['a="b c"', "d"]


def test_unterminated_quote_runs_to_the_end():
    assert parse_cmdline('quiet foo="bar baz') == [{"name": "quiet", "value": None},
                                                   {"name": "foo", "value": "bar baz"}]


def test_any_whitespace_separates():
    assert [p["name"] for p in parse_cmdline("  ro\tquiet\n splash  ")] == ["ro", "quiet", "splash"]


def test_value_with_equals_signs_is_kept_whole():
    params = parse_cmdline("root=PARTUUID=1234-5678 rd.luks.options=discard=on")
    assert params[0] == {"name": "root", "value": "PARTUUID=1234-5678"}
    assert params[1] == {"name": "rd.luks.options", "value": "discard=on"}


def test_empty_value_is_not_a_flag():
    assert parse_cmdline("vfio-pci.ids= quiet")[0] == {"name": "vfio-pci.ids", "value": ""}


@pytest.mark.parametrize("text", ["", None, "   \n"])
def test_empty_cmdline(text):
    assert parse_cmdline(text) == []
    assert split_cmdline(text) == []


def test_dashes_and_underscores_in_names_are_the_same_parameter():
    params = parse_cmdline("vfio-pci.ids=10de:1e87,10de:10f8 vfio_pci.disable_vga=1")
    assert param_values(params, "vfio_pci.ids") == ["10de:1e87,10de:10f8"]
    assert param_values(params, "vfio-pci.disable-vga") == ["1"]


def test_last_value_of_a_missing_parameter():
    assert last_value(parse_cmdline("ro quiet"), "intel_iommu") is None
    assert last_value(parse_cmdline("ro quiet"), "quiet") is None  # present, but a flag
    assert param_values(parse_cmdline("ro quiet"), "quiet") == [None]


def test_has_flag_looks_into_comma_lists_without_substring_matches():
    params = parse_cmdline("intel_iommu=sm_on,igfx_off iommu=pt")
    assert has_flag(params, "intel_iommu", "igfx_off")
    assert has_flag(params, "intel_iommu", "sm_on")
    assert not has_flag(params, "intel_iommu", "on")
    assert has_flag(params, "iommu", "pt")
    assert not has_flag(params, "amd_iommu", "on")
    assert not has_flag(parse_cmdline("quiet"), "quiet", "on")
