"""rEFInd over real files (data/bootloaders/refind-*/, sources in data/bootloaders/README-kernelstub-refind-limine.md):
refind_linux.conf as refind-install/mkrlconf write it and the manual's example (the default line gets the
parameters; single-user and minimal lines only get replacements and removals), manual stanzas in
refind.conf and an included file (disabled, non-Linux and SYSLINUX submenus untouched), byte-for-byte
preservation, idempotence, the read-back and the layouts that are refused."""
from __future__ import annotations


import pytest

from helpers import applied, BOOTLOADER_DATA as DATA

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as config
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_refind as refind
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

CTX = {"esp": "/boot/efi", "family": "debian", "distribution": "debian", "tools": {"refind-install", "mkrlconf"}}
LAYOUTS = ("refind-debian", "refind-docs-example", "refind-manual-stanzas")
RLC = "/boot/refind_linux.conf"
CONF = "/boot/efi/EFI/refind/refind.conf"
MANUAL = "/boot/efi/EFI/refind/manual.conf"
VFIO = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                    {"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"}])
WORDS = "intel_iommu=on iommu=pt vfio-pci.ids=10de:1e87,10de:10f8"
STD = "root=UUID=3c1b4b5e-6d2f-4a8e-9b07-5e1f2a3c4d6e ro quiet"
NOTHING = ("neither /boot/refind_linux.conf nor an enabled manual stanza booting Linux with an options line in refind.conf: "
           "rEFInd then guesses the options from /etc/fstab; create the file with mkrlconf (rEFInd) and run again, nothing "
           "was changed")


def layout(name: str) -> dict:
    return config.read_paths(str(DATA / name), refind.inputs(CTX))


def text(name: str, path: str) -> str:
    return (DATA / name / path.lstrip("/")).read_text(encoding="utf-8")


def mkrlconf(standard: str, minimal: str = "ro root=/dev/nvme0n1p2") -> str:
    """The three lines refind-install's GenerateRefindLinuxConf (and mkrlconf) write."""
    return (f'"Boot with standard options"  "{standard}"\n"Boot to single-user mode"    "{standard} single"\n'
            f'"Boot with minimal options"   "{minimal}"\n')


def planned(files, entries) -> dict:
    res = refind.plan(files, entries, CTX)
    assert res["errors"] == [], res["errors"]
    again = refind.plan(applied(files, res), entries, CTX)
    assert again["files"] == {} and again["errors"] == []          # idempotent
    return res


# ---- the fixtures --------------------------------------------------------------------------------------
def test_every_file_is_cited_in_the_readme():
    readme = (DATA / "README-kernelstub-refind-limine.md").read_text(encoding="utf-8")
    for name in LAYOUTS:
        assert f"`{name}/`" in readme
        for path in sorted(p for p in (DATA / name).rglob("*") if p.is_file()):
            assert f"/{path.relative_to(DATA / name)}" in readme, path


def test_the_fixtures_are_what_the_tools_write():
    assert text("refind-debian", RLC) == mkrlconf(STD)
    sample = text("refind-debian", CONF)
    assert text("refind-manual-stanzas", CONF) == sample.replace("#include manual.conf\n", "include manual.conf\n")
    assert [st["title"] for st in refind.stanzas(CONF, sample)] == [
        "Linux", "Arch Linux", "Ubuntu", "ELILO", "Windows 7", "Windows via shell script", "My macOS", "macOS via BootNext"]
    assert all(st["disabled"] for st in refind.stanzas(CONF, sample))


def test_inputs():
    assert refind.inputs({"esp": "/efi"}) == [RLC, "/boot/refind-linux.conf", "/efi/EFI/refind/refind.conf",
                                              "/efi/EFI/BOOT/refind.conf", "/efi/EFI/refind/*.conf", "/efi/EFI/BOOT/*.conf"]
    assert sorted(p for p, t in layout("refind-manual-stanzas").items() if t is not None) == [MANUAL, CONF]
    assert refind.outputs(CTX, {}) == refind.inputs(CTX)


# ---- refind_linux.conf ---------------------------------------------------------------------------------
def test_debian_adds_to_the_standard_line_only():
    files = layout("refind-debian")
    res = planned(files, VFIO)
    assert res["files"] == {RLC: {"content": mkrlconf(STD).replace(f'"{STD}"\n', f'"{STD} {WORDS}"\n'), "mode": None}}
    assert res["commands"] == [] and res["config_path"] == RLC
    assert res["warnings"] == [] and res["errors"] == []


def test_the_manuals_example_keeps_its_blank_before_the_quote_and_its_comment():
    files = layout("refind-docs-example")
    res = planned(files, VFIO)
    before = text("refind-docs-example", RLC)
    old = '"ro root=UUID=084f544a-7559-4d4b-938a-b920f59edc7e splash=silent quiet showopts "\n'
    assert before.count(old) == 1
    assert res["files"] == {RLC: {"content": before.replace(
        old, f'"ro root=UUID=084f544a-7559-4d4b-938a-b920f59edc7e splash=silent quiet showopts {WORDS} "\n'), "mode": None}}
    assert res["files"][RLC]["content"].endswith('"ro root=UUID=084f544a-7559-4d4b-938a-b920f59edc7e"\n# This line is a comment\n')


def test_replacements_and_removals_reach_every_line_additions_only_the_normal_ones():
    files = {RLC: mkrlconf(f"{STD} vfio-pci.ids=1002:67df splash")}
    entries = kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"}, {"name": "splash", "state": "absent"},
                           {"name": "iommu", "value": "pt"}])
    res = planned(files, entries)
    assert res["files"][RLC]["content"] == (
        f'"Boot with standard options"  "{STD} vfio-pci.ids=10de:1e87,10de:10f8 iommu=pt"\n'
        f'"Boot to single-user mode"    "{STD} vfio-pci.ids=10de:1e87,10de:10f8 single"\n'
        '"Boot with minimal options"   "ro root=/dev/nvme0n1p2"\n')


def test_other_normal_choices_get_the_parameters_fallback_ones_do_not():
    # the three choices of the ArchWiki rEFInd article's refind_linux.conf example
    before = ('"Boot using default options"     "root=PARTUUID=XXXXXXXX rw add_efi_memmap"\n'
              '"Boot using fallback initramfs"  "root=PARTUUID=XXXXXXXX rw add_efi_memmap initrd=boot\\initramfs-%v-fallback.img"\n'
              '"Boot to terminal"               "root=PARTUUID=XXXXXXXX rw add_efi_memmap systemd.unit=multi-user.target"\n')
    res = planned({RLC: before}, VFIO)
    assert res["files"][RLC]["content"] == (
        f'"Boot using default options"     "root=PARTUUID=XXXXXXXX rw add_efi_memmap {WORDS}"\n'
        '"Boot using fallback initramfs"  "root=PARTUUID=XXXXXXXX rw add_efi_memmap initrd=boot\\initramfs-%v-fallback.img"\n'
        f'"Boot to terminal"               "root=PARTUUID=XXXXXXXX rw add_efi_memmap systemd.unit=multi-user.target {WORDS}"\n')


def test_the_default_line_gets_them_even_when_minimal():
    res = planned({RLC: '"Arch"  "root=/dev/sda2 rw"\n'}, VFIO)
    assert res["files"][RLC]["content"] == f'"Arch"  "root=/dev/sda2 rw {WORDS}"\n'


def test_doubled_quotes_tabs_and_crlf_are_kept():
    before = ('# options for the kernels in /boot\r\n'
              '"Boot with standard options"\t"root=/dev/sdb9  my_opt=""this is it""   quiet"\t# trailing comment\r\n')
    res = planned({RLC: before}, VFIO + kp.validate([{"name": "quiet", "state": "absent"}]))
    assert res["files"][RLC]["content"] == (
        '# options for the kernels in /boot\r\n'
        f'"Boot with standard options"\t"root=/dev/sdb9  my_opt=""this is it""   {WORDS}"\t# trailing comment\r\n')
    nb = refind.next_boot({RLC: res["files"][RLC]["content"]}, CTX)
    assert nb["cmdline"] == f'root=/dev/sdb9 my_opt="this is it" {WORDS}'


def test_the_hyphenated_name_is_read_when_the_usual_one_is_absent():
    files = {"/boot/refind-linux.conf": mkrlconf(STD)}
    res = planned(files, VFIO)
    assert list(res["files"]) == ["/boot/refind-linux.conf"] and res["config_path"] == "/boot/refind-linux.conf"


def test_an_unquoted_single_word_string_is_quoted_when_it_grows():
    res = planned({RLC: '"Default" quiet\n'}, VFIO)
    assert res["files"][RLC]["content"] == f'"Default" "quiet {WORDS}"\n'


# ---- manual stanzas --------------------------------------------------------------------------------------
def test_manual_stanzas_in_the_included_file():
    files = layout("refind-manual-stanzas")
    res = planned(files, VFIO)
    before = text("refind-manual-stanzas", MANUAL)
    assert before.count('    options "root=/dev/sda3 ro"\n') == 1
    after = before.replace('    options "root=/dev/sda3 ro"\n', f'    options "root=/dev/sda3 ro {WORDS}"\n')
    assert res["files"] == {MANUAL: {"content": after, "mode": None}}
    assert res["config_path"] == MANUAL and res["warnings"] == [] and res["commands"] == []
    # the disabled Ubuntu stanza, the shell script's options and the SYSLINUX submenu are untouched
    content = res["files"][MANUAL]["content"]
    assert 'options "fs0:\\EFI\\tools\\launch_windows.nsh"\n' in content
    assert "        loader \\EFI\\syslinux\\syslinux.efi\n\tinitrd\n\toptions\n    }\n" in content


def test_submenu_options_and_add_options():
    files = {CONF: ('menuentry "Arch Linux" {\n    loader   /boot/vmlinuz-linux\n    initrd   /boot/initramfs-linux.img\n'
                    '    options  "root=PARTUUID=5028fa50 rw vfio-pci.ids=1002:67df"\n'
                    '    submenuentry "Boot to single-user mode" {\n        options "root=PARTUUID=5028fa50 rw single vfio-pci.ids=1002:67df"\n    }\n'
                    '    submenuentry "Boot with the GPU bound" {\n        add_options "vfio-pci.ids=1002:67df"\n    }\n'
                    '    submenuentry "Disabled" {\n        add_options "vfio-pci.ids=1002:67df"\n        disabled\n    }\n}\n')}
    entries = kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87"}, {"name": "iommu", "value": "pt"}])
    res = planned(files, entries)
    assert res["files"][CONF]["content"] == files[CONF].replace(
        '"root=PARTUUID=5028fa50 rw vfio-pci.ids=1002:67df"', '"root=PARTUUID=5028fa50 rw vfio-pci.ids=10de:1e87 iommu=pt"').replace(
        '"root=PARTUUID=5028fa50 rw single vfio-pci.ids=1002:67df"', '"root=PARTUUID=5028fa50 rw single vfio-pci.ids=10de:1e87"').replace(
        '        add_options "vfio-pci.ids=1002:67df"\n    }\n    submenuentry "Disabled"',
        '        add_options "vfio-pci.ids=10de:1e87"\n    }\n    submenuentry "Disabled"')
    assert res["files"][CONF]["content"].count('add_options "vfio-pci.ids=1002:67df"\n        disabled') == 1
    nb = refind.next_boot(applied(files, res), CTX)
    assert [(e["title"], e["cmdline"]) for e in nb["entries"]] == [
        ("Arch Linux", "root=PARTUUID=5028fa50 rw vfio-pci.ids=10de:1e87 iommu=pt"),
        ("Arch Linux > Boot to single-user mode", "root=PARTUUID=5028fa50 rw single vfio-pci.ids=10de:1e87"),
        ("Arch Linux > Boot with the GPU bound", "root=PARTUUID=5028fa50 rw vfio-pci.ids=10de:1e87 iommu=pt vfio-pci.ids=10de:1e87")]


def test_refind_linux_conf_and_enabled_stanzas_are_both_edited():
    files = layout("refind-manual-stanzas")
    files[RLC] = mkrlconf(STD)
    res = planned(files, VFIO)
    assert sorted(res["files"]) == [MANUAL, RLC] and res["config_path"] == RLC


def test_a_linux_stanza_without_options_is_warned():
    files = {CONF: 'menuentry Gentoo {\n    loader /EFI/gentoo/vmlinuz-6.6.30-gentoo\n    ostype Linux\n}\n', RLC: mkrlconf(STD)}
    res = refind.plan(files, VFIO, CTX)
    assert list(res["files"]) == [RLC] and res["errors"] == []
    assert res["warnings"] == [f"{CONF} line 1: menuentry 'Gentoo' boots Linux without an options line; add one by hand "
                               "if the kernel needs parameters from rEFInd"]
    # with nothing else to edit it is an error
    res = refind.plan({CONF: files[CONF]}, VFIO, CTX)
    assert res["files"] == {} and res["errors"] == [NOTHING]


# ---- refused layouts ---------------------------------------------------------------------------------------
def test_only_disabled_stanzas_is_an_error():
    files = {p: t for p, t in layout("refind-debian").items() if p != RLC}
    res = refind.plan(files, VFIO, CTX)
    assert res["files"] == {} and res["errors"] == [NOTHING]


@pytest.mark.parametrize("content,error", [
    ('"Boot with standard options"  "root=/dev/sda2 ro\n',
     f"{RLC} line 1 has a quote that is not closed on its line; nothing was changed"),
    ('"Boot with standard options"  root=/dev/sda2 ro quiet\n',
     f"{RLC} line 1: the option string is not quoted, so rEFInd passes only 'root'; put the options in double quotes; "
     "nothing was changed"),
    ('"Boot with standard options"  "root=/dev/sda2 ro"\n"Just a title"\n',
     f"{RLC} line 2 has a title but no option string: rEFInd stops reading the file there (linux.c AddKernelToSubmenu); "
     "give it \"options\" or comment it out; nothing was changed"),
    ("# only comments\n\n",
     f"{RLC} has no option line: rEFInd then guesses the options from /etc/fstab; write it with mkrlconf (rEFInd) and run "
     "again; nothing was changed"),
])
def test_broken_refind_linux_conf_is_refused(content, error):
    res = refind.plan({RLC: content, CONF: text("refind-debian", CONF)}, VFIO, CTX)
    assert res["errors"] == [error] and res["files"] == {}


def test_broken_stanzas_are_refused():
    res = refind.plan({CONF: 'menuentry Arch {\n    loader /vmlinuz-linux\n    options root=/dev/sda3 ro\n}\n'}, VFIO, CTX)
    assert res["errors"] == [f"{CONF} line 3: the options value is not quoted, so rEFInd passes only 'root'; put the options "
                             "in double quotes; nothing was changed"]
    res = refind.plan({CONF: 'menuentry Arch {\n    loader /vmlinuz-linux\n    options "root=/dev/sda3 ro"\n'}, VFIO, CTX)
    assert res["errors"] == [f"{CONF} line 1: menuentry 'Arch' has no closing '}}'; nothing was changed"]


# ---- read-back ---------------------------------------------------------------------------------------------
def test_next_boot_is_the_first_line():
    files = layout("refind-debian")
    nb = refind.next_boot(applied(files, planned(files, VFIO)), CTX)
    assert nb["errors"] == [] and nb["source"] == RLC
    assert nb["cmdline"] == f"{STD} {WORDS}" and kp.missing(nb["cmdline"], VFIO) == []
    assert [(e["title"], e["cmdline"]) for e in nb["entries"]] == [
        ("Boot with standard options", f"{STD} {WORDS}"), ("Boot to single-user mode", f"{STD} single"),
        ("Boot with minimal options", "ro root=/dev/nvme0n1p2")]
    assert kp.missing(refind.next_boot(files, CTX)["cmdline"], VFIO) == VFIO


def test_next_boot_without_refind_linux_conf_is_the_first_enabled_manual_stanza():
    files = layout("refind-manual-stanzas")
    nb = refind.next_boot(applied(files, planned(files, VFIO)), CTX)
    assert nb["source"] == MANUAL and nb["cmdline"] == f"root=/dev/sda3 ro {WORDS}"
    assert [e["title"] for e in nb["entries"]] == ["Arch", "Arch > single-user mode", "Arch > Use fallback initrd"]
    assert nb["entries"][1]["cmdline"] == f"root=/dev/sda3 ro {WORDS} single"


def test_next_boot_errors():
    assert refind.next_boot({}, CTX)["errors"] == [
        "no option line in /boot/refind_linux.conf and no enabled manual Linux stanza in refind.conf"]
    assert refind.next_boot({RLC: '"x" "unclosed\n'}, CTX)["errors"] == [f"{RLC} line 1 has a quote that is not closed on its line"]


def test_tokens_follow_refinds_reader():
    assert refind.tokens('menuentry "Arch Linux" {') == [
        ("menuentry", 0, 9, False), ("Arch Linux", 11, 21, True), ("{", 23, 24, False)]
    assert [t[0] for t in refind.tokens("timeout 20 # comment")] == ["timeout", "20"]
    assert [t[0] for t in refind.tokens("scanfor internal,external,optical,manual")] == [
        "scanfor", "internal", "external", "optical", "manual"]
    assert [t[0] for t in refind.tokens('options "a=""b c"" d"')] == ["options", 'a="b c" d']


def test_registered_under_its_name():
    assert config.loader("refind") is refind
