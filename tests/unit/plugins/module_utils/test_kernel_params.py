"""Kernel parameters of the bootloader stage: strict validation of ``vfio_kernel_params``, the defaults
this host needs (from the detection facts and the binding and initramfs plans), and the one edit of
command line words every bootloader module applies."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import parse_cmdline


def entry(name, value=None, state="present"):
    return {"name": name, "value": value, "state": state}


def one(name, value=None, state="present"):
    return kp.validate([{"name": name, "value": value, "state": state}])


# ---- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "-iommu", ".x", "intel iommu", "iommu=pt", "vfio-pci.ids\n", "a" * 65, "$x", "ü", None, 3])
def test_malformed_names_are_refused(name):
    with pytest.raises(kp.ParamError, match="is not a kernel parameter name"):
        kp.validate([{"name": name, "value": "1"}])


@pytest.mark.parametrize("value", ["a b", 'on"', "'on'", "on\n", "$vt_handoff", "a\\b", "`id`", "x;y", "", "a\tb", "é", ["on"], {"a": 1}])
def test_values_that_are_not_one_plain_word_are_refused(value):
    with pytest.raises(kp.ParamError, match="has blanks, quotes or shell characters, or is empty"):
        kp.validate([{"name": "foo", "value": value}])


def test_accepted_values_and_the_normalised_entry():
    assert kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"},
                        {"name": "quiet"},
                        {"name": "video", "value": "efifb:off", "state": "present", "reason": "opt-in"},
                        {"name": "pcie_acs_override", "value": "id:10de:1e87", "state": None}]) == [
        {"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8", "state": "present"},
        {"name": "quiet", "value": None, "state": "present"},
        {"name": "video", "value": "efifb:off", "state": "present", "reason": "opt-in"},
        {"name": "pcie_acs_override", "value": "id:10de:1e87", "state": "present"},
    ]
    assert kp.validate(None) == [] and kp.validate([]) == []


@pytest.mark.parametrize("value, expected", [(True, "true"), (False, "false"), (1, "1"), (0, "0"), (4294967295, "4294967295"),
                                             (1.5, "1.5")])
def test_yaml_booleans_and_numbers_become_the_words_the_kernel_reads(value, expected):
    assert one("foo", value) == [entry("foo", expected)]


def test_unknown_state_and_keys_and_shapes():
    with pytest.raises(kp.ParamError, match=r"state 'removed' must be present or absent"):
        one("quiet", None, "removed")
    with pytest.raises(kp.ParamError, match=r"unknown key\(s\) vaule \(use name, value, state\)"):
        kp.validate([{"name": "iommu", "vaule": "pt"}])
    with pytest.raises(kp.ParamError, match="must be a list of"):
        kp.validate({"name": "iommu"})
    with pytest.raises(kp.ParamError, match="entry 1 \\('iommu=pt'\\) must be a mapping"):
        kp.validate(["iommu=pt"])


@pytest.mark.parametrize("name", ["root", "initrd", "init", "ro", "rw", "rootflags", "rootfstype", "resume", "BOOT_IMAGE",
                                  "Root"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_reserved_names_are_never_touched(name, state):
    with pytest.raises(kp.ParamError, match=f"{name} decides whether the system boots at all"):
        one(name, "UUID=1234" if state == "present" else None, state)


def test_present_and_absent_of_the_same_parameter_conflict():
    with pytest.raises(kp.ParamError, match="^vfio_kernel_params: iommu is both present and absent; keep one entry$"):
        kp.validate([entry("iommu", "pt"), entry("iommu", None, "absent")])
    with pytest.raises(kp.ParamError, match="both present and absent"):
        kp.validate([entry("vfio_pci.ids", "10de:1e87", "absent"), entry("vfio-pci.ids", "10de:1e87")])
    # removing another value of it is no conflict: amd_iommu=on goes, amd_iommu=force_isolation stays
    assert kp.validate([entry("amd_iommu", "force_isolation"), entry("amd_iommu", "on", "absent")]) == [
        entry("amd_iommu", "force_isolation"), entry("amd_iommu", "on", "absent")]


def test_two_values_for_one_parameter_conflict_but_repeats_and_multi_parameters_do_not():
    with pytest.raises(kp.ParamError, match=r"^vfio_kernel_params: vfio-pci.ids is given twice with different values "
                                            r"\('10de:1e87' and '1002:73bf'\); keep one entry$"):
        kp.validate([entry("vfio-pci.ids", "10de:1e87"), entry("vfio_pci.ids", "1002:73bf")])
    assert kp.validate([entry("iommu", "pt"), entry("iommu", "pt")]) == [entry("iommu", "pt")]
    # console= and rd.driver.pre= stand several times; video= once per framebuffer driver
    assert len(kp.validate([entry("console", "tty0"), entry("console", "ttyS0,115200")])) == 2
    assert len(kp.validate([entry("rd.driver.pre", "vfio_pci"), entry("rd.driver.pre", "vfio_iommu_type1")])) == 2
    assert len(kp.validate([entry("video", "efifb:off"), entry("video", "vesafb:off")])) == 2
    with pytest.raises(kp.ParamError, match="given twice"):
        kp.validate([entry("video", "efifb:off"), entry("video", "efifb:1024x768")])
    # two removals of different values both stay (the second was dropped silently before)
    assert kp.validate([entry("amd_iommu", "on", "absent"), entry("amd_iommu", "force", "absent")]) == [
        entry("amd_iommu", "on", "absent"), entry("amd_iommu", "force", "absent")]


def test_amd_iommu_on_is_refused_with_the_hint():
    with pytest.raises(kp.ParamError) as exc:
        one("amd_iommu", "on")
    assert str(exc.value) == (
        "vfio_kernel_params entry 1: amd_iommu=on: on is not a value the kernel accepts for amd_iommu (known: force_enable, force_isolation, fullflush, "
        "irtcachedis, nohugepages, off, pgtbl_v1, pgtbl_v2, v2_pgsizes_only) (the AMD IOMMU is on by default when the "
        "firmware enables it; it needs no parameter)")
    # removing it is what the user should do, so that is accepted
    assert one("amd_iommu", "on", "absent") == [entry("amd_iommu", "on", "absent")]


@pytest.mark.parametrize("name, value", [("intel_iommu", "on,sm_on"), ("intel_iommu", "igfx_off"), ("iommu", "pt"),
                                         ("iommu", "nopt"), ("amd_iommu", "force_isolation"), ("intel-iommu", "on")])
def test_documented_iommu_values_are_accepted(name, value):
    assert one(name, value) == [entry(name, value)]


@pytest.mark.parametrize("name, value, bad", [("intel_iommu", "1", "1"), ("intel_iommu", "on,sm-on", "sm-on"),
                                              ("iommu", "passthrough", "passthrough"), ("iommu", "pt,on", "on"),
                                              ("amd_iommu", "pt", "pt")])
def test_typos_in_iommu_values_are_refused(name, value, bad):
    with pytest.raises(kp.ParamError, match=f"^vfio_kernel_params entry 1: {name}={value}: {bad} is not a value the kernel accepts for {name} "):
        one(name, value)


def test_the_same_vfio_ids_in_another_order_are_satisfied():
    """The user's own vfio-pci.ids with the same ids is not rewritten (nor recorded as the stage's)."""
    words = ["quiet", 'vfio-pci.ids=1002:aaf8,1002:687f']
    assert kp.satisfied(words, entry("vfio-pci.ids", "1002:687f,1002:aaf8"))
    assert not kp.satisfied(words, entry("vfio-pci.ids", "1002:687f"))
    assert kp.apply(words, [entry("vfio-pci.ids", "1002:687F,1002:aaf8")]) == words


# ---- apply / edit -------------------------------------------------------------------------------------
LINE = 'BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=UUID=7f1e ro quiet vfio_pci.ids=10de:1e87 "acpi_osi=Windows 2015" splash'


def test_other_words_keep_order_and_spelling_and_present_is_appended():
    out = kp.edit(LINE, [entry("intel_iommu", "on"), entry("iommu", "pt")])
    assert out == LINE + " intel_iommu=on iommu=pt"


def test_replace_in_place_of_the_last_occurrence_with_dash_underscore_equivalence():
    words = ["quiet", "vfio-pci.ids=1111:2222", "splash", "vfio_pci.ids=10de:1e87", "loglevel=3"]
    assert kp.apply(words, [entry("vfio-pci.ids", "10de:1e87,10de:10f8")]) == [
        "quiet", "vfio-pci.ids=1111:2222", "splash", "vfio_pci.ids=10de:1e87,10de:10f8", "loglevel=3"]
    # satisfied: nothing changes, also when only the spelling differs
    assert kp.apply(words, [entry("vfio-pci.ids", "10de:1e87")]) == words
    assert kp.edit("a  b   vfio_pci.ids=1", [entry("vfio-pci.ids", "1")]) == "a  b   vfio_pci.ids=1"


def test_append_false_only_replaces_and_removes():
    assert kp.apply(["quiet", "iommu=nopt"], [entry("iommu", "pt"), entry("intel_iommu", "on")], append=False) == [
        "quiet", "iommu=pt"]
    assert kp.apply(["quiet"], [entry("quiet", None, "absent"), entry("nomodeset")], append=False) == []


def test_absent_without_value_removes_every_occurrence_with_value_only_that_word():
    words = ["quiet", "video=efifb:off", "Video=HDMI-A-1:1920x1080", "splash", "quiet"]
    assert kp.apply(words, [entry("quiet", None, "absent")]) == ["video=efifb:off", "Video=HDMI-A-1:1920x1080", "splash"]
    assert kp.apply(words, [entry("video", None, "absent")]) == ["quiet", "splash", "quiet"]
    assert kp.apply(words, [entry("video", "efifb:off", "absent")]) == ["quiet", "Video=HDMI-A-1:1920x1080", "splash", "quiet"]
    assert kp.apply(["vfio-pci.ids=1", "vfio_pci.ids=2"], [entry("vfio_pci.ids", "2", "absent")]) == ["vfio-pci.ids=1"]


def test_quoted_words_are_kept_and_understood():
    out = kp.edit(LINE, [entry("acpi_osi", None, "absent")])
    assert '"acpi_osi=Windows 2015"' not in out
    assert kp.edit(LINE, [entry("splash", None, "absent")]) == LINE.rsplit(" ", 1)[0]
    assert kp.satisfied(kp.split_cmdline('"nomodeset"'), entry("nomodeset"))


def test_a_flag_and_a_value_are_different():
    assert kp.apply(["quiet=1"], [entry("quiet")]) == ["quiet"]
    assert kp.apply(["quiet"], [entry("quiet")]) == ["quiet"]
    assert not kp.satisfied(["quiet"], entry("quiet", "1"))


def test_iommu_switches_keep_their_other_items():
    # intel_iommu=on,sm_on already does what a default intel_iommu=on asks (it was rewritten to "on" before)
    assert kp.apply(["intel_iommu=on,sm_on"], [entry("intel_iommu", "on")]) == ["intel_iommu=on,sm_on"]
    assert kp.apply(["intel_iommu=on", "intel_iommu=igfx_off"], [entry("intel_iommu", "on")]) == [
        "intel_iommu=on", "intel_iommu=igfx_off"]
    # off is replaced by on, the other items stay
    assert kp.apply(["intel_iommu=off,igfx_off"], [entry("intel_iommu", "on")]) == ["intel_iommu=igfx_off,on"]
    assert kp.apply(["intel_iommu=on", "intel_iommu=off"], [entry("intel_iommu", "on")]) == ["intel_iommu=on", "intel_iommu=on"]
    assert kp.apply(["iommu=nopt"], [entry("iommu", "pt")]) == ["iommu=pt"]
    assert kp.apply(["intel_iommu=on"], [entry("intel_iommu", "on,sm_on")]) == ["intel_iommu=on,sm_on"]
    # removing one item of a comma list
    assert kp.apply(["amd_iommu=on,force_isolation", "quiet", "amd_iommu=on"], [entry("amd_iommu", "on", "absent")]) == [
        "amd_iommu=force_isolation", "quiet"]
    assert kp.satisfied(["amd_iommu=force_isolation"], entry("amd_iommu", "on", "absent"))


def test_parameters_that_stand_several_times_are_added_not_replaced():
    assert kp.apply(["console=tty1", "console=ttyS0"], [entry("console", "ttyS1,115200")]) == [
        "console=tty1", "console=ttyS0", "console=ttyS1,115200"]
    assert kp.apply(["console=tty1", "console=ttyS0"], [entry("console", "tty1")]) == ["console=tty1", "console=ttyS0"]
    assert kp.apply(["rd.driver.pre=nvme"], [entry("rd.driver.pre", "vfio_pci")]) == ["rd.driver.pre=nvme", "rd.driver.pre=vfio_pci"]
    # video= is one parameter per framebuffer driver: the user's mode line stays
    assert kp.apply(["video=HDMI-A-1:1920x1080@60"], [entry("video", "efifb:off")]) == [
        "video=HDMI-A-1:1920x1080@60", "video=efifb:off"]
    assert kp.apply(["video=efifb:on", "video=DP-1:d"], [entry("video", "efifb:off")]) == ["video=efifb:off", "video=DP-1:d"]


def test_edit_keeps_the_string_when_nothing_changes_and_comparable_drops_loader_words():
    assert kp.edit("ro  quiet ", [entry("quiet")]) == "ro  quiet "
    assert kp.edit("", [entry("iommu", "pt")]) == "iommu=pt"
    assert kp.comparable("BOOT_IMAGE=/vmlinuz root=UUID=1 ro quiet splash $vt_handoff initrd=\\initrd.img iommu=pt") == [
        "iommu=pt", "quiet", "ro", "root=UUID=1", "splash"]


def test_missing_lists_the_entries_not_done():
    entries = [entry("intel_iommu", "on"), entry("iommu", "pt"), entry("nomodeset", None, "absent"), entry("quiet")]
    assert kp.missing("ro quiet intel_iommu=on nomodeset", entries) == [entry("iommu", "pt"), entry("nomodeset", None, "absent")]
    assert kp.missing(kp.edit("ro quiet intel_iommu=on nomodeset", entries), entries) == []


# ---- defaults ------------------------------------------------------------------------------------------
def facts(kind=None, default_on=None, cmdline="", vendor=None):
    return {"iommu": {"type": kind, "kernel_default_on": default_on},
            "system": {"cpu": {"vendor": vendor}},
            "cmdline": {"raw": cmdline, "params": parse_cmdline(cmdline)}}


def names(result):
    return [(p["name"], p["value"], p["state"]) for p in result["params"]]


PT = ("iommu", "pt", "present")


@pytest.mark.parametrize("default_on, reason", [
    (False, "this kernel leaves the Intel IOMMU off by default (CONFIG_INTEL_IOMMU_DEFAULT_ON is not set)"),
    (None, "whether this kernel turns the Intel IOMMU on by default is unknown (no kernel configuration found for "
           "CONFIG_INTEL_IOMMU_DEFAULT_ON); intel_iommu=on makes sure"),
])
def test_intel_needs_intel_iommu_on_unless_the_kernel_enables_it(default_on, reason):
    res = kp.defaults(facts("intel", default_on), {}, {}, {})
    assert names(res) == [("intel_iommu", "on", "present"), PT]
    assert res["params"][0]["reason"] == reason and res["warnings"] == []


def test_intel_default_on_needs_nothing_unless_the_command_line_turns_it_off():
    assert names(kp.defaults(facts("intel", True), {}, {}, {})) == [PT]
    res = kp.defaults(facts("intel", True, "ro quiet intel_iommu=off"), {}, {}, {})
    assert names(res) == [("intel_iommu", "on", "present"), PT]
    assert res["params"][0]["reason"].startswith("the command line turns the Intel IOMMU off (intel_iommu=off)")
    assert names(kp.defaults(facts("intel", True, "intel_iommu=off intel_iommu=on"), {}, {}, {})) == [PT]


def test_intel_iommu_facts_from_the_real_detection(tmp_path):
    """CONFIG_INTEL_IOMMU_DEFAULT_ON unset, =n and =y in /boot/config-<running> as _iommu reads it."""
    from helpers import fs_of  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._iommu import iommu_state  # pylint: disable=import-outside-toplevel
    got = {}
    for label, line in (("unset", "# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set\n"), ("n", "CONFIG_INTEL_IOMMU_DEFAULT_ON=n\n"),
                        ("y", "CONFIG_INTEL_IOMMU_DEFAULT_ON=y\n"), ("unknown", None)):
        root = tmp_path / label
        (root / "boot").mkdir(parents=True)
        (root / "sys/class/iommu/dmar0").mkdir(parents=True)
        if line is not None:
            (root / "boot/config-6.8.0-31-generic").write_text("CONFIG_INTEL_IOMMU=y\n" + line)
        state = iommu_state(fs_of(root), "intel", [], [], "6.8.0-31-generic")
        got[label] = (state["type"], state["kernel_default_on"],
                      names(kp.defaults({"iommu": state, "cmdline": {"params": []}}, {}, {}, {}))[:1])
    assert got == {"unset": ("intel", False, [("intel_iommu", "on", "present")]),
                   "n": ("intel", False, [("intel_iommu", "on", "present")]),
                   "y": ("intel", True, [PT]),
                   "unknown": ("intel", None, [("intel_iommu", "on", "present")])}


def test_amd_needs_no_switch_and_amd_iommu_on_is_only_warned_about():
    assert kp.defaults(facts("amd", True), {}, {}, {}) == {
        "params": [{"name": "iommu", "value": "pt", "state": "present",
                    "reason": "passthrough mode for host devices: only devices given to VMs are translated"}],
        "warnings": []}
    res = kp.defaults(facts("amd", True, "quiet amd_iommu=on iommu=pt"), {}, {}, {})
    assert names(res) == [PT]
    assert res["warnings"] == ["amd_iommu=on is on the command line but is not a value the kernel knows (it is ignored); "
                               "remove it with vfio_kernel_params: [{name: amd_iommu, value: 'on', state: absent}]"]
    assert len(kp.defaults(facts("amd", True, "amd_iommu=on,force_isolation"), {}, {}, {})["warnings"]) == 1


def test_iommu_off_on_the_command_line_is_removed():
    assert names(kp.defaults(facts("amd", True, "amd_iommu=off"), {}, {}, {})) == [("amd_iommu", "off", "absent"), PT]
    res = kp.defaults(facts("intel", True, "iommu=off"), {}, {}, {})
    assert names(res) == [("iommu", "off", "absent"), PT]
    # applied together they leave iommu=pt
    assert kp.apply(["quiet", "iommu=off"], kp.validate(res["params"])) == ["quiet", "iommu=pt"]


def test_cpu_vendor_is_used_when_the_iommu_type_is_unknown_and_unknown_vendor_warns():
    assert names(kp.defaults(facts(None, False, vendor="intel"), {}, {}, {})) == [("intel_iommu", "on", "present"), PT]
    res = kp.defaults(facts(None, None, vendor="other"), {}, {}, {})
    assert res == {"params": [], "warnings": [
        "the IOMMU type of this host is unknown (neither Intel nor AMD): no IOMMU parameter added"]}
    assert kp.defaults({}, None, None, None) == res


def test_options_turn_defaults_off():
    assert names(kp.defaults(facts("intel", False), {}, {}, {"iommu": False, "iommu_pt": False})) == []
    assert names(kp.defaults(facts("intel", False), {}, {}, {"iommu": None, "iommu_pt": False})) == [("intel_iommu", "on", "present")]


def test_vfio_ids_from_the_bind_plan_and_params_of_the_plans():
    bind = {"ids": ["10de:1e87", "10de:10f8"], "kernel_params": ["vfio-pci.ids=10de:1e87,10de:10f8"]}
    initramfs = {"kernel_params": ["rd.driver.pre=vfio_pci"]}
    res = kp.defaults(facts("amd", True), bind, initramfs, {})
    assert names(res) == [PT, ("vfio-pci.ids", "10de:1e87,10de:10f8", "present"), ("rd.driver.pre", "vfio_pci", "present")]
    assert [p["reason"] for p in res["params"][1:]] == [
        "vfio-pci claims these ids as soon as it loads, also from the initramfs",
        "the initramfs generator loads vfio_pci before other drivers with it"]
    # without the ids default the bind plan's parameter (vfio-pci built into the kernel) still comes
    res = kp.defaults(facts("amd", True), bind, {}, {"vfio_ids": False})
    assert names(res) == [PT, ("vfio-pci.ids", "10de:1e87,10de:10f8", "present")]
    assert res["params"][1]["reason"] == "the binding stage needs it"
    assert names(kp.defaults(facts("amd", True), {"ids": []}, {"kernel_params": []}, {})) == [PT]
    # two plans asking for the same early driver give one entry, two different ones two
    two = kp.defaults(facts("amd", True), {"kernel_params": ["rd.driver.pre=vfio_pci"]},
                      {"kernel_params": ["rd.driver.pre=vfio_pci", "rd.driver.pre=vfio_iommu_type1"]}, {})
    assert names(two)[1:] == [("rd.driver.pre", "vfio_pci", "present"), ("rd.driver.pre", "vfio_iommu_type1", "present")]


def test_efifb_off_is_opt_in_and_keeps_other_video_modes():
    assert ("video", "efifb:off", "present") not in names(kp.defaults(facts("amd", True), {}, {}, {}))
    res = kp.defaults(facts("amd", True), {}, {}, {"efifb_off": True})
    assert names(res)[-1] == ("video", "efifb:off", "present")
    assert kp.edit("quiet video=HDMI-A-1:1920x1080", kp.validate(res["params"])) == "quiet video=HDMI-A-1:1920x1080 iommu=pt video=efifb:off"


@pytest.mark.parametrize("value", ["downstream", "multifunction", "downstream,multifunction", "id:10de:1e87", "id:10DE:1E87,downstream"])
def test_acs_override_valid_values_come_with_the_warning(value):
    res = kp.defaults(facts("amd", True), {}, {}, {"acs_override": value})
    assert names(res)[-1] == ("pcie_acs_override", value, "present")
    assert res["warnings"] == [f"pcie_acs_override={value} is set on request: it only works on kernels carrying the out-of-tree "
                               "ACS override patch, and it makes the kernel treat devices as isolated that may not be: a VM can "
                               "then reach memory of devices it was not given"]


@pytest.mark.parametrize("value, bad", [("yes", "yes"), ("downstream,id:10de", "id:10de"), ("id:10de:1e8", "id:10de:1e8"),
                                        ("downstream multifunction", "downstream multifunction"), ("downstream\n", "downstream\n"), (True, "True")])
def test_acs_override_invalid_values_are_errors(value, bad):
    with pytest.raises(kp.ParamError, match="is not downstream, multifunction or id:vvvv:dddd$") as exc:
        kp.defaults(facts("amd", True), {}, {}, {"acs_override": value})
    assert f": {bad} is not" in str(exc.value)
    assert kp.defaults(facts("amd", True), {}, {}, {"acs_override": ""})["warnings"] == []


# ---- merge ---------------------------------------------------------------------------------------------
def test_user_entries_override_defaults_with_the_same_parameter():
    computed = kp.defaults(facts("intel", False), {"ids": ["10de:1e87"]}, {}, {"efifb_off": True})["params"]
    user = kp.validate([{"name": "vfio_pci.ids", "value": "10de:1e87,10de:10f8"},
                        {"name": "intel_iommu", "state": "absent"},
                        {"name": "video", "value": "HDMI-A-1:1920x1080"},
                        {"name": "iommu", "value": "nopt", "state": "absent"}])
    merged = kp.merge(computed, user)
    assert [(e["name"], e["value"], e["state"]) for e in merged] == [
        ("iommu", "pt", "present"), ("video", "efifb:off", "present"),
        ("vfio_pci.ids", "10de:1e87,10de:10f8", "present"), ("intel_iommu", None, "absent"),
        ("video", "HDMI-A-1:1920x1080", "present"), ("iommu", "nopt", "absent")]
    assert kp.validate(merged) == merged
    # a user removal of exactly the default value removes the default too
    assert kp.merge([entry("iommu", "pt")], [entry("iommu", "pt", "absent")]) == [entry("iommu", "pt", "absent")]
    # a user value of a parameter the defaults remove wins over the removal
    assert kp.merge([entry("amd_iommu", "off", "absent")], [entry("amd_iommu", "off")]) == [entry("amd_iommu", "off")]
    assert kp.merge([entry("console", "tty0")], [entry("console", "ttyS0")]) == [entry("console", "tty0"), entry("console", "ttyS0")]
