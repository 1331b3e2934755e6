"""GRUB with BLS entries (grubby's layout) over real Fedora and RHEL files (data/bootloaders/, sources in
its README): every entry's options, $kernelopts in the fixed-size grubenv, GRUB_CMDLINE_LINUX and
/etc/kernel/cmdline edited like grubby --update-kernel=ALL; other words and lines untouched,
idempotence, GRUB's menu order and default for the read-back, and refusals for broken layouts."""
from __future__ import annotations


import pytest

from helpers import applied, BOOTLOADER_DATA as DATA

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_bls as bls
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as cfg
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

F34 = "/boot/loader/entries/e986846f63134c7295458cf36300ba5b-"
F40 = "/boot/loader/entries/a9f3c1d27e5b4c08b6d41e2f9a7c3b58-"
EL8 = "/boot/loader/entries/3f1e5c2b7a9d4e6f8b0c1d2e3f4a5b6c-"
EL8_KERNELOPTS = ("root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root "
                  "rd.lvm.lv=rhel/swap rhgb quiet ")
F34_OPTS = ("root=UUID=45fdf703-3966-401b-b8f7-cf056affd2b0 ro rd.driver.blacklist=nouveau modprobe.blacklist=nouveau "
            "nvidia-drm.modeset=1 rhgb quiet rd.driver.blacklist=nouveau modprobe.blacklist=nouveau nvidia-drm.modeset=1 "
            "crashkernel=4G-16G:768M,16G-64G:1G,64G-128G:2G,128G-1T:4G,1T-2T:6G,2T-4T:12G,4T-8T:20G,8T-16T:36G,16T-32T:64G,"
            "32T-64T:128G,64T-102400T:180G fadump=on")
F40_OPTS = "root=UUID=8c5b1f3e-2d4a-4e6b-9f17-3a2c5d8e1b40 ro rootflags=subvol=root rhgb quiet"
# add two, replace one value (the last occurrence), remove a flag
ENTRIES = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                       {"name": "nvidia-drm.modeset", "value": "0"}, {"name": "quiet", "state": "absent"}])
ADDED = "intel_iommu=on iommu=pt nvidia-drm.modeset=0"  # where nvidia-drm.modeset is not set yet


def load(layout: str) -> dict:
    """The layout's files by their path below / (as the stage reads them: text, surrogateescape)."""
    base = DATA / layout
    return {"/" + str(p.relative_to(base)): p.read_bytes().decode("utf-8", "surrogateescape")
            for p in sorted(base.rglob("*")) if p.is_file()}


def content(result: dict, path: str) -> str:
    assert not result["errors"], result["errors"]
    return result["files"][path]["content"]


def replace_line(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text)
    return text.replace(old, new)


# ---- data and registration --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["fedora-34-bls", "fedora-40-bls", "rhel-8-kernelopts"])
def test_each_layout_is_cited_in_the_readme(layout):
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert f"`{layout}/`" in readme
    assert (DATA / layout).is_dir()


def test_the_stage_finds_the_module_under_grubby():
    assert cfg.loader("grubby") is bls


def test_inputs_are_the_files_grubby_touches():
    assert bls.inputs({}) == ["/etc/default/grub", "/boot/loader/entries/*.conf", "/boot/grub2/grubenv", "/etc/kernel/cmdline"]


# ---- Fedora 34: options in every entry, rescue included -----------------------------------------------
def test_fedora34_every_entry_rescue_included_gets_the_edit_and_nothing_else_changes():
    files = load("fedora-34-bls")
    res = bls.plan(files, ENTRIES, {})
    assert res["errors"] == [] and res["commands"] == []
    new_opts = F34_OPTS.replace(" rhgb quiet ", " rhgb ").replace(
        "nouveau nvidia-drm.modeset=1 crashkernel", "nouveau nvidia-drm.modeset=0 crashkernel") + " intel_iommu=on iommu=pt"
    for name in ("5.15.6-100.fc34.x86_64", "5.14.14-200.fc34.x86_64", "5.14.14-200.fc34.x86_64.0~custom", "0-rescue"):
        path = f"{F34}{name}.conf"
        assert content(res, path) == replace_line(files[path], f"options {F34_OPTS}\n", f"options {new_opts}\n")
    assert list(res["files"]) == ["/etc/default/grub"] + [f"{F34}{n}.conf" for n in (
        "5.15.6-100.fc34.x86_64", "5.14.14-200.fc34.x86_64.0~custom", "5.14.14-200.fc34.x86_64", "0-rescue")] + ["/etc/kernel/cmdline"]


def test_fedora34_grub_cmdline_linux_gets_the_additions_like_grubby():
    files = load("fedora-34-bls")
    res = bls.plan(files, ENTRIES, {})
    assert content(res, "/etc/default/grub") == replace_line(
        files["/etc/default/grub"],
        'GRUB_CMDLINE_LINUX="rd.driver.blacklist=nouveau modprobe.blacklist=nouveau nvidia-drm.modeset=1 rhgb quiet"',
        'GRUB_CMDLINE_LINUX="rd.driver.blacklist=nouveau modprobe.blacklist=nouveau nvidia-drm.modeset=0 rhgb '
        'intel_iommu=on iommu=pt"')


def test_fedora34_missing_kernel_cmdline_is_created_from_the_default_entry():
    res = bls.plan(load("fedora-34-bls"), ENTRIES, {})
    new_opts = F34_OPTS.replace(" rhgb quiet ", " rhgb ").replace(
        "nouveau nvidia-drm.modeset=1 crashkernel", "nouveau nvidia-drm.modeset=0 crashkernel") + " intel_iommu=on iommu=pt"
    assert res["files"]["/etc/kernel/cmdline"] == {"content": new_opts + "\n", "mode": 0o644}
    assert res["warnings"] == [f"/etc/kernel/cmdline did not exist: it was created from {F34}5.15.6-100.fc34.x86_64.conf as "
                               "grubby does, so that kernels installed before the reboot get these parameters too"]
    assert res["config_path"] == f"{F34}5.15.6-100.fc34.x86_64.conf"


@pytest.mark.parametrize("layout", ["fedora-34-bls", "fedora-40-bls", "rhel-8-kernelopts"])
def test_planning_the_planned_files_again_changes_nothing(layout):
    files = load(layout)
    first = bls.plan(files, ENTRIES, {})
    assert first["files"] and not first["errors"]
    second = bls.plan(applied(files, first), ENTRIES, {})
    assert second["files"] == {} and second["errors"] == []


def test_fedora34_menu_order_is_grubs_newest_version_first_then_file_name():
    nb = bls.next_boot(load("fedora-34-bls"), {})
    assert [e["id"] for e in nb["entries"]] == [
        "e986846f63134c7295458cf36300ba5b-5.15.6-100.fc34.x86_64",
        "e986846f63134c7295458cf36300ba5b-5.14.14-200.fc34.x86_64.0~custom",
        "e986846f63134c7295458cf36300ba5b-5.14.14-200.fc34.x86_64",
        "e986846f63134c7295458cf36300ba5b-0-rescue"]
    # no saved_entry in this grubenv: GRUB boots the first entry
    assert nb["source"] == f"{F34}5.15.6-100.fc34.x86_64.conf" and nb["cmdline"] == F34_OPTS and nb["errors"] == []


def test_fedora34_read_back_after_the_plan_has_every_parameter():
    files = load("fedora-34-bls")
    nb = bls.next_boot(applied(files, bls.plan(files, ENTRIES, {})), {})
    assert kp.missing(nb["cmdline"], ENTRIES) == []
    assert "quiet" not in nb["cmdline"].split() and nb["cmdline"].endswith(" intel_iommu=on iommu=pt")


# ---- Fedora 40: saved_entry, existing /etc/kernel/cmdline -----------------------------------------------
def test_fedora40_kernel_cmdline_is_edited_in_place():
    files = load("fedora-40-bls")
    res = bls.plan(files, ENTRIES, {})
    assert content(res, "/etc/kernel/cmdline") == ("root=UUID=8c5b1f3e-2d4a-4e6b-9f17-3a2c5d8e1b40 ro rootflags=subvol=root rhgb "
                                                   f"{ADDED}\n")
    assert content(res, "/etc/default/grub") == replace_line(files["/etc/default/grub"], 'GRUB_CMDLINE_LINUX="rhgb quiet"',
                                                             f'GRUB_CMDLINE_LINUX="rhgb {ADDED}"')
    assert res["warnings"] == []


def test_fedora40_read_back_follows_saved_entry_not_the_newest_kernel():
    files = load("fedora-40-bls")
    nb = bls.next_boot(files, {})
    assert nb["entries"][0]["id"] == "a9f3c1d27e5b4c08b6d41e2f9a7c3b58-6.10.12-200.fc40.x86_64"
    assert nb["default"] == "a9f3c1d27e5b4c08b6d41e2f9a7c3b58-6.8.5-301.fc40.x86_64"
    assert nb["source"] == f"{F40}6.8.5-301.fc40.x86_64.conf" and nb["cmdline"] == F40_OPTS


def test_saved_entry_that_matches_nothing_falls_back_to_the_first_with_a_warning():
    files = load("fedora-40-bls")
    files["/boot/grub2/grubenv"] = files["/boot/grub2/grubenv"].replace("6.8.5-301.fc40", "6.1.0-100.fc40")
    nb = bls.next_boot(files, {})
    assert nb["source"] == f"{F40}6.10.12-200.fc40.x86_64.conf"
    assert nb["warnings"] == ["GRUB's default 'a9f3c1d27e5b4c08b6d41e2f9a7c3b58-6.1.0-100.fc40.x86_64' matches no entry: "
                              "GRUB boots the first one"]


@pytest.mark.parametrize("setting,expected", [("1", "6.8.5-301.fc40.x86_64"), ("0", "6.10.12-200.fc40.x86_64"),
                                              ('"Fedora Linux (6.8.5-301.fc40.x86_64) 40 (Workstation Edition)"',
                                               "6.8.5-301.fc40.x86_64")])
def test_grub_default_other_than_saved_is_an_index_or_a_title(setting, expected):
    files = load("fedora-40-bls")
    files["/etc/default/grub"] = files["/etc/default/grub"].replace("GRUB_DEFAULT=saved", f"GRUB_DEFAULT={setting}")
    assert bls.next_boot(files, {})["source"] == f"{F40}{expected}.conf"


def test_crlf_entry_keeps_its_line_endings():
    files = load("fedora-40-bls")
    path = f"{F40}6.8.5-301.fc40.x86_64.conf"
    files[path] = files[path].replace("\n", "\r\n")
    res = bls.plan(files, ENTRIES, {})
    assert content(res, path) == files[path].replace(f"options {F40_OPTS}\r\n",
                                                     f"options {F40_OPTS.replace(' quiet', '')} {ADDED}\r\n")


def test_missing_grub_cmdline_linux_is_added_as_a_line():
    files = load("fedora-40-bls")
    files["/etc/default/grub"] = files["/etc/default/grub"].replace('GRUB_CMDLINE_LINUX="rhgb quiet"\n', "")
    res = bls.plan(files, ENTRIES, {})
    assert content(res, "/etc/default/grub") == files["/etc/default/grub"] + f'GRUB_CMDLINE_LINUX="{ADDED}"\n'


# ---- RHEL 8: $kernelopts in the grubenv ------------------------------------------------------------------
def test_rhel8_kernelopts_is_edited_and_the_entries_keep_their_variables():
    files = load("rhel-8-kernelopts")
    res = bls.plan(files, ENTRIES, {})
    assert [p for p in res["files"] if p.startswith("/boot/loader/")] == []
    env = content(res, "/boot/grub2/grubenv")
    assert len(env.encode()) == 1024
    new_opts = EL8_KERNELOPTS.replace(" quiet ", f" {ADDED}")
    before = files["/boot/grub2/grubenv"].rstrip("#")
    assert env.rstrip("#") == before.replace(f"kernelopts={EL8_KERNELOPTS}\n", f"kernelopts={new_opts}\n")
    assert env.startswith("# GRUB Environment Block\nsaved_entry=3f1e5c2b7a9d4e6f8b0c1d2e3f4a5b6c-4.18.0-513.5.1.el8_9.x86_64\n")
    assert res["config_path"] == "/boot/grub2/grubenv"
    # new kernels get 'options $kernelopts' from the kernel's bls.conf: no /etc/kernel/cmdline is created
    assert "/etc/kernel/cmdline" not in res["files"]


def test_rhel8_read_back_expands_kernelopts_and_drops_empty_variables():
    files = load("rhel-8-kernelopts")
    nb = bls.next_boot(applied(files, bls.plan(files, ENTRIES, {})), {})
    assert nb["source"] == f"{EL8}4.18.0-513.5.1.el8_9.x86_64.conf"
    assert nb["cmdline"] == ("root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root "
                             f"rd.lvm.lv=rhel/swap rhgb {ADDED}")
    assert [e["id"] for e in nb["entries"]] == [f"3f1e5c2b7a9d4e6f8b0c1d2e3f4a5b6c-{v}" for v in (
        "4.18.0-513.5.1.el8_9.x86_64", "4.18.0-477.27.1.el8_8.x86_64", "0-rescue")]


def test_rhel8_literal_words_next_to_kernelopts_are_replaced_and_removed_in_place():
    files = load("rhel-8-kernelopts")
    path = f"{EL8}4.18.0-513.5.1.el8_9.x86_64.conf"
    files[path] = replace_line(files[path], "options $kernelopts $tuned_params\n",
                               "options $kernelopts quiet nvidia-drm.modeset=1 $tuned_params\n")
    res = bls.plan(files, ENTRIES, {})
    assert content(res, path) == replace_line(files[path], "options $kernelopts quiet nvidia-drm.modeset=1 $tuned_params\n",
                                              "options $kernelopts nvidia-drm.modeset=0 $tuned_params\n")
    # the additions go to kernelopts, which every entry expands
    assert content(res, "/boot/grub2/grubenv").count(f"kernelopts={EL8_KERNELOPTS.replace(' quiet ', f' {ADDED}')}\n") == 1


def test_kernelopts_that_would_overflow_the_grubenv_is_an_error_and_nothing_is_written():
    long = [{"name": f"x{i}", "value": "a" * 500} for i in range(2)]
    res = bls.plan(load("rhel-8-kernelopts"), kp.validate(long), {})
    assert res["files"] == {}
    assert len(res["errors"]) == 1
    assert res["errors"][0].startswith("kernelopts would not fit into the 1024-byte /boot/grub2/grubenv (")


def test_kernelopts_entry_without_kernelopts_in_the_grubenv_is_an_error():
    files = load("rhel-8-kernelopts")
    files["/boot/grub2/grubenv"] = files["/boot/grub2/grubenv"].replace(f"kernelopts={EL8_KERNELOPTS}\n", "")
    res = bls.plan(files, ENTRIES, {})
    assert res["files"] == {}
    assert res["errors"] == [f"{EL8}4.18.0-513.5.1.el8_9.x86_64.conf boots with $kernelopts but /boot/grub2/grubenv has no "
                             "kernelopts=: GRUB would boot it without a root= (repair it with 'grub2-mkconfig -o "
                             "/boot/grub2/grub.cfg'), nothing was changed"]


def test_grubenv_without_its_signature_is_an_error():
    files = load("rhel-8-kernelopts")
    files["/boot/grub2/grubenv"] = files["/boot/grub2/grubenv"].replace("# GRUB Environment Block\n", "# garbage\n")
    res = bls.plan(files, ENTRIES, {})
    assert res["files"] == {}
    assert res["errors"] == ["/boot/grub2/grubenv does not start with '# GRUB Environment Block': not a GRUB environment block"]


# ---- broken layouts ----------------------------------------------------------------------------------------
def test_no_entries_is_an_error():
    files = {p: t for p, t in load("fedora-40-bls").items() if not p.startswith("/boot/loader/")}
    res = bls.plan(files, ENTRIES, {})
    assert res["files"] == {} and res["errors"] == [
        "no Boot Loader Specification entries in /boot/loader/entries: this grubby layout is unknown, nothing was changed "
        "(set vfio_bootloader to the bootloader really in use)"]


def test_entry_with_two_options_lines_is_an_error():
    files = load("fedora-40-bls")
    path = f"{F40}6.8.5-301.fc40.x86_64.conf"
    files[path] = files[path].replace("grub_users", "options iommu=soft\ngrub_users")
    res = bls.plan(files, ENTRIES, {})
    assert res["files"] == {}
    assert res["errors"] == [f"{path} has 2 options lines: GRUB reads only the first and grubby would overwrite them all; "
                             "merge them into one line and run again"]


def test_unparsable_grub_cmdline_linux_is_an_error():
    files = load("fedora-40-bls")
    files["/etc/default/grub"] = files["/etc/default/grub"].replace('"rhgb quiet"', '"$(cat /etc/cmdline)"')
    res = bls.plan(files, ENTRIES, {})
    assert res["files"] == {} and len(res["errors"]) == 1
    assert res["errors"][0].startswith("/etc/default/grub line 6: GRUB_CMDLINE_LINUX has ")


# ---- helpers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("newer,older,expected", [("5.15.6-100.fc34", "5.14.14-200.fc34", 1), ("6.10.1", "6.9.12", 1),
                                                  ("1.0~rc1", "1.0", -1), ("1.0a", "1.0", 1), ("1.0", "1.0.1", -1),
                                                  ("0-rescue-abc", "4.18.0", -1), ("1.01", "1.1", 0)])
def test_vercmp_is_grubs_rpm_version_compare(newer, older, expected):
    assert bls.vercmp(newer, older) == expected
    assert bls.vercmp(older, newer) == -expected


def test_expand_drops_unset_variables_like_grub():
    assert bls.expand("$kernelopts $tuned_params x", {"kernelopts": "root=/dev/sda1 ro", "tuned_params": ""}) == "root=/dev/sda1 ro x"
    assert bls.expand("${kernelopts} y", {"kernelopts": "a"}) == "a y"


def test_missing_kernel_cmdline_is_not_created_from_an_entry_without_options():
    files = {p: t for p, t in load("fedora-40-bls").items() if p != "/etc/kernel/cmdline"}
    for path in [p for p in files if p.startswith("/boot/loader/entries/")]:
        files[path] = files[path].replace(f"options {F40_OPTS}\n", "options $kernelargs\n")
    res = bls.plan(files, ENTRIES, {})
    assert "/etc/kernel/cmdline" not in res["files"] and res["errors"] == []
    assert res["warnings"] == [f"/etc/kernel/cmdline does not exist and {F40}6.8.5-301.fc40.x86_64.conf has no options to "
                               "create it from"]
