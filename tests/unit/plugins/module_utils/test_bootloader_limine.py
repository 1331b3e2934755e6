"""Limine over real and generated layouts (data/bootloaders/limine-*/, sources in
data/bootloaders/README-kernelstub-refind-limine.md): archinstall's flat limine.conf in the EFI
application's directory, nested entries with kernel_cmdline, limine-entry-tool's /etc/default/limine
with Omarchy's drop-ins, and archboot's legacy limine.cfg. Covered: which entries get the parameters
(fallback and snapshot entries do not), byte-for-byte preservation, idempotence, the default entry
(index counted over expanded directories, entry paths), and the layouts that are refused."""
from __future__ import annotations


import pytest

from helpers import applied, BOOTLOADER_DATA as DATA

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as config
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_limine as limine
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

CTX = {"esp": "/boot", "family": "arch", "distribution": "arch", "tools": {"limine"}}
TOOL_CTX = dict(CTX, tools={"limine", "limine-update", "limine-mkinitcpio", "limine-entry-tool"})
BIOS_CTX = {"esp": None, "family": "arch", "distribution": "arch", "tools": {"limine"}}
LAYOUTS = {"limine-archinstall": CTX, "limine-arch-nested": CTX, "limine-entry-tool": TOOL_CTX, "limine-v7-legacy": BIOS_CTX}
ARCHINSTALL = "/boot/EFI/arch-limine/limine.conf"
CONF = "/boot/limine.conf"
DEFAULTS = "/etc/default/limine"
DROPIN = "/etc/limine-entry-tool.d/omarchy-defaults.conf"
VFIO = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                    {"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"}])
WORDS = "intel_iommu=on iommu=pt vfio-pci.ids=10de:1e87,10de:10f8"
ENROLL = ("if a checksum of the Limine configuration is enrolled in the Limine EFI binary ('limine enroll-config', needed "
          "with Secure Boot), enroll it again: Limine refuses a changed file")
AI_CMDLINE = "root=PARTUUID=2f8e1b7c-4d3a-4e6f-9a1b-7c5d3e2f1a09 zswap.enabled=0 rootflags=subvol=/@ rw rootfstype=btrfs"
NESTED_CMDLINE = "root=UUID=6a1f0c2e-9b3d-4f5a-8c7e-1d2b3a4c5e6f rw rootfstype=ext4 quiet"
OMARCHY_CMDLINE = ("cryptdevice=PARTUUID=0d6c9f2e-3b1a-4c8d-9e7f-5a4b3c2d1e0f:root root=/dev/mapper/root zswap.enabled=0 "
                   "rootflags=subvol=/@ rw rootfstype=btrfs")
QUIET = "quiet splash loglevel=0 systemd.show_status=false rd.udev.log_level=0 vt.global_cursor_default=0"


def layout(name: str) -> dict:
    return config.read_paths(str(DATA / name), limine.inputs(LAYOUTS[name]))


def text(name: str, path: str) -> str:
    return (DATA / name / path.lstrip("/")).read_text(encoding="utf-8")


def planned(files, entries, ctx=None) -> dict:
    ctx = ctx or CTX
    res = limine.plan(files, entries, ctx)
    assert res["errors"] == [], res["errors"]
    again = limine.plan(applied(files, res), entries, ctx)
    assert again["files"] == {} and again["errors"] == []          # idempotent
    return res


def nested(**replace) -> dict:
    body = text("limine-arch-nested", CONF)
    for old, new in replace.items():
        assert body.count(old) >= 1, old
        body = body.replace(old, new)
    return {CONF: body}


# ---- the fixtures --------------------------------------------------------------------------------------
def test_every_file_is_cited_in_the_readme():
    readme = (DATA / "README-kernelstub-refind-limine.md").read_text(encoding="utf-8")
    for name in LAYOUTS:
        assert f"`{name}/`" in readme
        for path in sorted(p for p in (DATA / name).rglob("*") if p.is_file()):
            assert f"/{path.relative_to(DATA / name)}" in readme, path


def test_inputs_follow_limines_search_order():
    conf = ["/efi/EFI/limine/limine.conf", "/efi/EFI/*/limine.conf", "/efi/EFI/BOOT/limine.conf",
            "/efi/boot/limine/limine.conf", "/efi/boot/limine.conf", "/efi/limine/limine.conf", "/efi/limine.conf",
            "/boot/limine/limine.conf", "/boot/limine.conf"]
    assert limine.inputs({"esp": "/efi"}) == conf + [p.replace(".conf", ".cfg") for p in conf] + [
        "/usr/share/limine-entry-tool.d/*.conf", "/etc/limine-entry-tool.conf", "/etc/limine-entry-tool.d/*.conf", DEFAULTS]
    assert sorted(p for p, t in layout("limine-archinstall").items() if t is not None) == [ARCHINSTALL]
    assert sorted(p for p, t in layout("limine-entry-tool").items() if t is not None) == [
        CONF, DEFAULTS, DROPIN, "/etc/limine-entry-tool.d/omarchy-uki.conf"]
    assert limine.outputs(CTX, {}) == limine.inputs(CTX)


# ---- limine.conf edited directly -------------------------------------------------------------------------
def test_archinstall_flat_entries_in_the_efi_application_directory():
    files = layout("limine-archinstall")
    res = planned(files, VFIO)
    before = text("limine-archinstall", ARCHINSTALL)
    assert before.count(f"    cmdline: {AI_CMDLINE}\n") == 2
    assert res["files"] == {ARCHINSTALL: {"content": before.replace(f"    cmdline: {AI_CMDLINE}\n",
                                                                    f"    cmdline: {AI_CMDLINE} {WORDS}\n"), "mode": None}}
    assert res["commands"] == [] and res["config_path"] == ARCHINSTALL and res["warnings"] == [ENROLL]


def test_nested_entries_get_the_parameters_and_the_efi_chainload_entry_does_not():
    files = layout("limine-arch-nested")
    res = planned(files, VFIO)
    before = text("limine-arch-nested", CONF)
    assert before.count(f"    kernel_cmdline: {NESTED_CMDLINE}\n") == 2
    assert res["files"] == {CONF: {"content": before.replace(f"    kernel_cmdline: {NESTED_CMDLINE}\n",
                                                             f"    kernel_cmdline: {NESTED_CMDLINE} {WORDS}\n"), "mode": None}}
    assert res["files"][CONF]["content"].endswith(
        "/Windows\n    protocol: efi_chainload\n    image_path: boot():/EFI/Microsoft/Boot/bootmgfw.efi\n")


def test_replacement_and_removal_in_place_keep_the_other_words_and_blanks():
    files = nested(**{f"kernel_cmdline: {NESTED_CMDLINE}": "kernel_cmdline: root=UUID=6a1f0c2e  vfio-pci.ids=1002:67df   quiet rw"})
    entries = kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87"}, {"name": "quiet", "state": "absent"}])
    res = planned(files, entries)
    assert res["files"][CONF]["content"] == files[CONF].replace(
        "kernel_cmdline: root=UUID=6a1f0c2e  vfio-pci.ids=1002:67df   quiet rw",
        "kernel_cmdline: root=UUID=6a1f0c2e  vfio-pci.ids=10de:1e87 rw")


def test_fallback_entries_only_get_replacements_and_snapshots_nothing():
    extra = ("\n/Arch Linux (fallback initramfs)\n    protocol: linux\n    path: boot():/vmlinuz-linux\n"
             "    cmdline: root=UUID=6a1f rw vfio-pci.ids=1002:67df\n    module_path: boot():/initramfs-linux-fallback.img\n"
             "\n/+Snapshots\n    comment: 1 snapshot\n//1 | 2026-08-28 06:02:55\n    protocol: linux\n"
             "    cmdline: root=UUID=6a1f rw rootflags=subvol=/@/.snapshots/1/snapshot vfio-pci.ids=1002:67df\n")
    files = {CONF: text("limine-arch-nested", CONF) + extra}
    entries = VFIO
    res = planned(files, entries)
    new = res["files"][CONF]["content"]
    assert new == text("limine-arch-nested", CONF).replace(
        f"    kernel_cmdline: {NESTED_CMDLINE}\n", f"    kernel_cmdline: {NESTED_CMDLINE} {WORDS}\n") + extra.replace(
        "    cmdline: root=UUID=6a1f rw vfio-pci.ids=1002:67df\n", "    cmdline: root=UUID=6a1f rw vfio-pci.ids=10de:1e87,10de:10f8\n")


def test_kernel_cmdline_wins_over_cmdline_and_uppercase_keys_count():
    files = {CONF: "TIMEOUT: 3\n\n/Linux\n    PROTOCOL: linux\n    KERNEL_PATH: boot():/vmlinuz-linux\n    CMDLINE: ignored\n"
                   "    Kernel_Cmdline: root=/dev/sda2 rw\n"}
    res = planned(files, VFIO)
    assert res["files"][CONF]["content"] == files[CONF].replace("Kernel_Cmdline: root=/dev/sda2 rw",
                                                                f"Kernel_Cmdline: root=/dev/sda2 rw {WORDS}")
    assert limine.next_boot(applied(files, res), CTX)["cmdline"] == f"root=/dev/sda2 rw {WORDS}"


def test_crlf_tabs_and_a_file_without_final_newline_are_kept():
    files = {CONF: "timeout: 5\r\n\r\n/Arch Linux\r\n\tprotocol: linux\r\n\tpath: boot():/vmlinuz-linux\r\n"
                   "\tcmdline:\troot=/dev/sda2 rw  \r\n\tmodule_path: boot():/initramfs-linux.img"}
    res = planned(files, VFIO)
    assert res["files"][CONF]["content"] == files[CONF].replace("\tcmdline:\troot=/dev/sda2 rw  \r\n",
                                                                f"\tcmdline:\troot=/dev/sda2 rw {WORDS}  \r\n")


def test_a_macro_is_kept_and_expanded_for_the_read_back():
    files = {CONF: "${ROOT}=root=UUID=6a1f rw\n\n/Arch Linux\n    protocol: linux\n    path: boot():/vmlinuz-linux\n"
                   "    cmdline: ${ROOT} quiet\n"}
    res = planned(files, VFIO)
    assert res["files"][CONF]["content"] == files[CONF].replace("cmdline: ${ROOT} quiet", f"cmdline: ${{ROOT}} quiet {WORDS}")
    assert limine.next_boot(applied(files, res), CTX)["cmdline"] == f"root=UUID=6a1f rw quiet {WORDS}"


def test_an_efi_image_entry_is_edited_and_warned_about_its_built_in_command_line():
    # archinstall's UKI form of the same entry (uki_enabled: protocol efi, path EFI/Linux/arch-<kernel>.efi)
    files = {ARCHINSTALL: f"timeout: 5\n\n/Arch Linux (linux)\n    protocol: efi\n    path: boot():/EFI/Linux/arch-linux.efi\n"
                          f"    cmdline: {AI_CMDLINE}\n"}
    res = planned(files, VFIO)
    assert res["files"][ARCHINSTALL]["content"] == files[ARCHINSTALL].replace(AI_CMDLINE, f"{AI_CMDLINE} {WORDS}")
    assert res["warnings"] == ["'Arch Linux (linux)' boot an EFI image (a unified kernel image?): its cmdline reaches the "
                               "kernel only when the image has no built-in command line, and systemd-stub ignores it under "
                               "Secure Boot; rebuild the image with the parameters if it has one", ENROLL]


def test_several_configurations_are_all_edited_and_warned():
    files = dict(layout("limine-arch-nested"))
    files["/boot/EFI/BOOT/limine.conf"] = text("limine-archinstall", ARCHINSTALL)
    res = planned(files, VFIO)
    assert sorted(res["files"]) == ["/boot/EFI/BOOT/limine.conf", CONF]
    assert res["config_path"] == "/boot/EFI/BOOT/limine.conf"
    assert res["warnings"] == ["several Limine configurations (/boot/EFI/BOOT/limine.conf, /boot/limine.conf): Limine "
                               "reads only the first one it finds; all were edited", ENROLL]
    assert limine.next_boot(applied(files, res), CTX)["source"] == "/boot/EFI/BOOT/limine.conf"


def test_a_linux_entry_without_cmdline_is_warned():
    files = nested(**{f"    kernel_cmdline: {NESTED_CMDLINE}\n\n/Windows": "\n/Windows"})
    res = limine.plan(files, VFIO, CTX)
    assert res["errors"] == [] and list(res["files"]) == [CONF]
    assert res["warnings"] == [f"{CONF} line 15: entry 'linux-lts 6.6.52-1-lts (mkinitcpio)' boots Linux without a cmdline; "
                               "add one by hand if the kernel needs parameters from Limine", ENROLL]


def test_the_legacy_limine_cfg_is_edited_with_its_own_syntax():
    files = layout("limine-v7-legacy")
    res = planned(files, VFIO, BIOS_CTX)
    before = text("limine-v7-legacy", "/boot/limine.cfg")
    line = "    CMDLINE=root=PARTUUID=5f0e3c8b-02 rootfstype=ext4 rw \n"
    assert before.count(line) == 1
    assert res["files"] == {"/boot/limine.cfg": {"content": before.replace(
        line, f"    CMDLINE=root=PARTUUID=5f0e3c8b-02 rootfstype=ext4 rw {WORDS} \n"), "mode": None}}
    assert res["warnings"] == ["/boot/limine.cfg uses the Limine 7 syntax that Limine 9.0.0 stopped reading: convert it to "
                               "limine.conf before upgrading Limine past 8.x", ENROLL]
    nb = limine.next_boot(applied(files, res), BIOS_CTX)
    assert nb["cmdline"] == f"root=PARTUUID=5f0e3c8b-02 rootfstype=ext4 rw {WORDS}" and nb["source"] == "/boot/limine.cfg"
    # limine.cfg keys are case-sensitive (config.c config_format_old: strncmp): a lowercase key is no command line
    assert limine.parse("/boot/limine.cfg", before.replace("CMDLINE=", "cmdline="), legacy=True)["entries"][0]["options"].get(
        "CMDLINE") is None


def test_limine_conf_wins_over_limine_cfg():
    files = dict(layout("limine-v7-legacy"), **{CONF: text("limine-arch-nested", CONF)})
    res = planned(files, VFIO, BIOS_CTX)
    assert list(res["files"]) == [CONF] and res["config_path"] == CONF


# ---- limine-entry-tool -----------------------------------------------------------------------------------
def test_entry_tool_edits_etc_default_limine_and_the_entries_and_runs_limine_update():
    files = layout("limine-entry-tool")
    res = planned(files, VFIO, TOOL_CTX)
    assert res["files"] == {
        CONF: {"content": text("limine-entry-tool", CONF).replace(
            f"  cmdline: {QUIET} {OMARCHY_CMDLINE}\n", f"  cmdline: {QUIET} {OMARCHY_CMDLINE} {WORDS}\n"), "mode": None},
        DEFAULTS: {"content": f'ESP_PATH="/boot"\n\nKERNEL_CMDLINE[default]+="{OMARCHY_CMDLINE} {WORDS}"\n', "mode": None},
    }
    assert text("limine-entry-tool", DEFAULTS) == f'ESP_PATH="/boot"\n\nKERNEL_CMDLINE[default]+="{OMARCHY_CMDLINE}"\n'
    assert res["commands"] == [["limine-update"]] and res["config_path"] == DEFAULTS
    assert res["warnings"] == [ENROLL]
    nb = limine.next_boot(applied(files, res), TOOL_CTX)
    assert nb["cmdline"] == f"{QUIET} {OMARCHY_CMDLINE} {WORDS}" and nb["default"] == "Omarchy > linux"


@pytest.mark.parametrize("tools,command", [({"limine-mkinitcpio"}, "limine-mkinitcpio"), (set(), "limine-update")])
def test_entry_tool_command_is_what_the_root_has(tools, command):
    assert limine.plan(layout("limine-entry-tool"), VFIO, dict(CTX, tools=tools))["commands"] == [[command]]


def test_entry_tool_without_a_default_assignment_of_its_own_gets_an_added_line():
    files = layout("limine-entry-tool")
    files[DEFAULTS] = 'ESP_PATH="/boot"'                                 # no final newline
    files[DROPIN] = files[DROPIN] + f'KERNEL_CMDLINE[default]+=" {OMARCHY_CMDLINE}"\n'
    res = planned(files, VFIO, TOOL_CTX)
    assert res["files"][DEFAULTS]["content"] == f'ESP_PATH="/boot"\nKERNEL_CMDLINE[default]+=" {WORDS}"\n'
    assert DROPIN not in res["files"]


def test_entry_tool_replaces_in_etc_default_limine_and_outvotes_a_stale_drop_in():
    files = layout("limine-entry-tool")
    files[DEFAULTS] = 'ESP_PATH="/boot"\nKERNEL_CMDLINE[default]+=" root=/dev/sda2 rw vfio-pci.ids=1002:67df "\n'
    files[DROPIN] = 'KERNEL_CMDLINE[default]+=" vfio-pci.ids=1002:67df"\n'
    entries = kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87"}])
    res = planned(files, entries, TOOL_CTX)
    assert res["files"][DEFAULTS]["content"] == 'ESP_PATH="/boot"\nKERNEL_CMDLINE[default]+=" root=/dev/sda2 rw vfio-pci.ids=10de:1e87 "\n'
    assert DROPIN not in res["files"]


def test_entry_tool_refuses_to_remove_what_a_drop_in_sets():
    files = layout("limine-entry-tool")
    res = limine.plan(files, kp.validate([{"name": "splash", "state": "absent"}]), TOOL_CTX)
    assert res["files"] == {} and res["errors"] == [
        f"{DROPIN} line 3 sets what is to be removed; exliar.vfio edits only {DEFAULTS}: remove it from that file by hand; "
        "nothing was changed"]


def test_entry_tool_a_drop_in_reset_by_a_later_assignment_does_not_count():
    files = layout("limine-entry-tool")
    files[DEFAULTS] = f'ESP_PATH="/boot"\nKERNEL_CMDLINE[default]="{OMARCHY_CMDLINE}"\n'     # '=' replaces the drop-in's words
    res = planned(files, kp.validate([{"name": "splash", "state": "absent"}]), TOOL_CTX)
    assert DEFAULTS not in res["files"] and DROPIN not in res["files"]
    # the entry still says splash (limine-update rewrites it from the tool's configuration): removed there
    assert res["files"][CONF]["content"] == text("limine-entry-tool", CONF).replace(" splash loglevel=0", " loglevel=0")


def test_entry_tool_installed_without_etc_default_limine_is_warned():
    files = dict(layout("limine-arch-nested"), **{"/etc/limine-entry-tool.conf": 'TARGET_OS_NAME="Arch Linux"\n'})
    res = planned(files, VFIO)
    assert res["commands"] == [] and res["warnings"] == [
        f"limine-entry-tool is installed (/etc/limine-entry-tool.conf) but {DEFAULTS} does not exist: the tool rewrites the "
        f"entries at the next kernel update without these parameters; create {DEFAULTS} with KERNEL_CMDLINE[default] holding "
        "the whole command line and run again", ENROLL]


def test_entry_tool_per_kernel_lines_are_warned_and_enrolment_silences_its_warning():
    files = layout("limine-entry-tool")
    files[DEFAULTS] += 'KERNEL_CMDLINE[linux-lts]="root=/dev/mapper/root rw"\nENABLE_ENROLL_LIMINE_CONFIG=yes\n'
    res = planned(files, VFIO, TOOL_CTX)
    assert res["warnings"] == ["KERNEL_CMDLINE[linux-lts] is set for that kernel: if it replaces [default], add the "
                               "parameters there too (exliar.vfio edits [default])"]


@pytest.mark.parametrize("defaults,error", [
    ('ESP_PATH="/boot"\n', f"no KERNEL_CMDLINE[...] in {DEFAULTS} or limine-entry-tool's other configuration files: the tool "
                           "then takes the command line from elsewhere (/etc/kernel/cmdline), and an added line could lose "
                           f"root=; set KERNEL_CMDLINE[default] in {DEFAULTS} to the whole command line and run again"),
    ('KERNEL_CMDLINE="root=/dev/sda2 rw"\n', f"{DEFAULTS} line 1: KERNEL_CMDLINE without an index; exliar.vfio edits "
                                             "KERNEL_CMDLINE[default] only: write it that way"),
    ('KERNEL_CMDLINE[default]="root=$ROOT rw"\n', f"{DEFAULTS} line 1: KERNEL_CMDLINE has an escape, variable or command "
                                                  "substitution inside the value; simplify the line"),
    ('KERNEL_CMDLINE[default]="root=/dev/sda2\n', f"{DEFAULTS} line 1: KERNEL_CMDLINE has a quoted value that continues on "
                                                  "the next line; simplify the line"),
    ('KERNEL_CMDLINE[linux]="root=/dev/sda2 rw"\n', f"no KERNEL_CMDLINE[default] in limine-entry-tool's configuration; set "
                                                    f"it in {DEFAULTS}"),
])
def test_entry_tool_layouts_that_are_refused(defaults, error):
    files = {CONF: text("limine-entry-tool", CONF), DEFAULTS: defaults}
    res = limine.plan(files, VFIO, TOOL_CTX)
    assert res["errors"] == [f"{error}; nothing was changed"] and res["files"] == {} and res["commands"] == []


# ---- refused limine.conf layouts ---------------------------------------------------------------------------
@pytest.mark.parametrize("content,error", [
    ("/Arch\n    protocol: linux\n    cmdline: root=/dev/sda2 \\\n        rw\n",
     f"{CONF} line 3: the command line of 'Arch' continues on the next line; join it into one line"),
    ("/Arch\n///Deep\n    protocol: linux\n    cmdline: root=/dev/sda2 rw\n",
     f"{CONF} line 2: entry 'Deep' is 3 levels deep right after an entry of level 1 (Limine: 'Parentless child'); fix the '/'s"),
    ("${OPTS}=root=/dev/sda2 iommu=soft\n/Arch\n    protocol: linux\n    cmdline: ${OPTS} rw\n",
     f"{CONF} line 4: a macro in the command line of 'Arch' sets iommu; edit the macro by hand or write the parameters out"),
    # the Limine repository's own test/limine.conf kind of entries: no Linux at all
    ("timeout: 3\n/Limine Test\n    protocol: limine\n    path: boot():/boot/test.elf\n    cmdline: This is an example\n",
     f"{CONF} has no Linux entry (protocol: linux, or an EFI entry with a cmdline)"),
])
def test_broken_limine_conf_is_refused(content, error):
    res = limine.plan({CONF: content}, VFIO, CTX)
    assert res["errors"] == [f"{error}; nothing was changed"] and res["files"] == {}


def test_no_configuration_at_all_is_an_error():
    res = limine.plan({}, VFIO, CTX)
    assert res["files"] == {} and res["errors"] == [
        "no limine.conf in the places Limine reads it (the ESP's EFI/<loader dir>, /boot/limine, /boot, /limine, /) and no "
        "/etc/default/limine: this Limine layout is unknown, nothing was changed (set vfio_bootloader to the bootloader "
        "really in use)"]


# ---- read-back: the default entry --------------------------------------------------------------------------
def test_default_entry_counts_the_children_of_expanded_directories():
    files = layout("limine-arch-nested")
    nb = limine.next_boot(files, CTX)
    assert nb["default"] == "Arch Linux > linux-lts 6.6.52-1-lts (mkinitcpio)" and nb["warnings"] == []
    assert nb["cmdline"] == NESTED_CMDLINE and kp.missing(nb["cmdline"], VFIO) == VFIO
    assert [e["title"] for e in nb["entries"]] == ["Arch Linux > linux-lts 6.6.52-1-lts (Booster)",
                                                   "Arch Linux > linux-lts 6.6.52-1-lts (mkinitcpio)"]
    nb = limine.next_boot(applied(files, planned(files, VFIO)), CTX)
    assert kp.missing(nb["cmdline"], VFIO) == []
    assert limine.next_boot(nested(**{"default_entry: 3": "default_entry: 2"}), CTX)["default"] == \
        "Arch Linux > linux-lts 6.6.52-1-lts (Booster)"
    # collapsed: the children are not counted, entry 2 is Windows (no command line)
    nb = limine.next_boot(nested(**{"default_entry: 3": "default_entry: 2", "/+Arch Linux": "/Arch Linux"}), CTX)
    assert nb["default"] == "Arch Linux > linux-lts 6.6.52-1-lts (Booster)"
    assert nb["warnings"] == [f"{CONF}: the default entry 'Windows' is a directory or has no command line (Limine then waits "
                              "in its menu); the first entry with a command line is reported"]


def test_default_entry_out_of_range_or_missing_is_the_first_entry():
    nb = limine.next_boot(nested(**{"default_entry: 3": "default_entry: 9"}), CTX)
    assert nb["warnings"] == [f"{CONF}: the default entry 'Arch Linux' is a directory or has no command line (Limine then "
                              "waits in its menu); the first entry with a command line is reported"]
    assert nb["default"] == "Arch Linux > linux-lts 6.6.52-1-lts (Booster)"
    nb = limine.next_boot(layout("limine-archinstall"), CTX)
    assert nb["default"] == "Arch Linux (linux)" and nb["warnings"] == [] and nb["source"] == ARCHINSTALL


def test_default_entry_as_a_path():
    files = nested(**{"default_entry: 3": "default_entry: Arch Linux/linux-lts 6.6.52-1-lts (Booster)",
                      "/+Arch Linux": "/Arch Linux"})
    assert limine.next_boot(files, CTX)["default"] == "Arch Linux > linux-lts 6.6.52-1-lts (Booster)"
    dup = {CONF: "default_entry: A\\/B#1\n/A/B\n    protocol: linux\n    cmdline: first\n/A/B\n    protocol: linux\n"
                 "    cmdline: second\n"}
    assert limine.next_boot(dup, CTX)["cmdline"] == "second"
    nb = limine.next_boot(nested(**{"default_entry: 3": "default_entry: Nowhere/at all"}), CTX)
    assert nb["warnings"][0] == f"{CONF}: default_entry 'Nowhere/at all' names no entry; Limine selects the first one"


def test_global_options_after_the_first_entry_do_not_count_and_remember_last_entry_is_warned():
    files = nested(**{"default_entry: 3\n": "remember_last_entry: yes\n"})
    files[CONF] += "default_entry: 3\n"
    nb = limine.next_boot(files, CTX)
    assert nb["default"] == "Arch Linux > linux-lts 6.6.52-1-lts (Booster)"
    assert nb["warnings"][0] == (f"{CONF}: remember_last_entry is on; Limine boots the entry booted last, the default entry "
                                 "is reported")


def test_next_boot_errors():
    assert limine.next_boot({}, CTX)["errors"] == ["no limine.conf found where Limine reads it"]
    assert limine.next_boot({CONF: "timeout: 3\n"}, CTX)["errors"] == [f"{CONF} has no entry with a command line"]


def test_registered_under_its_name():
    assert config.loader("limine") is limine
