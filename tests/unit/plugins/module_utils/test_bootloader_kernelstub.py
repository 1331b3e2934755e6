"""Pop!_OS kernelstub over a default install's files (data/bootloaders/popos-22.04-kernelstub/, sources
in data/bootloaders/README-kernelstub-refind-limine.md): user.kernel_options edited inside the JSON
as kernelstub writes it (indent=2, no final newline), the loader entries kernelstub wrote edited to
match, the installer's recovery entry left alone, idempotence, the read-back through loader.conf's
default, and the layouts that are refused."""
from __future__ import annotations

import json

import pytest

from helpers import applied, BOOTLOADER_DATA as DATA

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as config
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_kernelstub as kstub
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

POP = "popos-22.04-kernelstub"
CTX = {"esp": "/boot/efi", "family": "debian", "distribution": "pop", "tools": {"kernelstub", "bootctl"}}
CONF = "/etc/kernelstub/configuration"
UUID = "b415d6c4-baec-4924-9b7f-5567aa9588e6"
CURRENT = "/boot/efi/loader/entries/Pop_OS-current.conf"
OLDKERN = "/boot/efi/loader/entries/Pop_OS-oldkern.conf"
RECOVERY = "/boot/efi/loader/entries/Recovery-B4C2-1F7E.conf"
POP_OPTIONS = "quiet loglevel=0 systemd.show_status=false splash"
VFIO = kp.validate([{"name": "intel_iommu", "value": "on"}, {"name": "iommu", "value": "pt"},
                    {"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"}])
WORDS = ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=10de:1e87,10de:10f8"]


def layout(name: str = POP, ctx=None) -> dict:
    return config.read_paths(str(DATA / name), kstub.inputs(ctx or CTX))


def text(path: str, name: str = POP) -> str:
    return (DATA / name / path.lstrip("/")).read_text(encoding="utf-8")


def planned(files, entries, ctx=None) -> dict:
    res = kstub.plan(files, entries, ctx or CTX)
    assert res["errors"] == [], res["errors"]
    again = kstub.plan(applied(files, res), entries, ctx or CTX)
    assert again["files"] == {} and again["errors"] == []          # idempotent
    return res


def kernelstub_json(options: list) -> str:
    """The configuration as kernelstub's config.py save_config writes it."""
    data = json.loads(text(CONF))
    data["user"]["kernel_options"] = options
    return json.dumps(data, indent=2)


def entry(options: str, name: str = "current") -> str:
    image, initrd = ("vmlinuz.efi", "initrd.img") if name == "current" else ("vmlinuz-previous.efi", "initrd.img-previous")
    return (f"title Pop!_OS\nlinux /EFI/Pop_OS-{UUID}/{image}\ninitrd /EFI/Pop_OS-{UUID}/{initrd}\n"
            f"options root=UUID={UUID} ro {options}\n")


# ---- the fixtures --------------------------------------------------------------------------------------
def test_every_file_is_cited_in_the_readme():
    readme = (DATA / "README-kernelstub-refind-limine.md").read_text(encoding="utf-8")
    for name in (POP, "kernelstub-sample"):
        assert f"`{name}/`" in readme
        for path in sorted(p for p in (DATA / name).rglob("*") if p.is_file()):
            assert f"/{path.relative_to(DATA / name)}" in readme, path


def test_the_fixture_is_what_kernelstub_writes():
    assert text(CONF) == json.dumps(json.loads(text(CONF)), indent=2)        # json.dump(indent=2), no final newline
    assert text(CURRENT) == entry(POP_OPTIONS) and text(OLDKERN) == entry(POP_OPTIONS, "oldkern")


def test_inputs_read_the_configuration_loader_conf_and_every_entry():
    assert kstub.inputs({"esp": "/boot/efi/"}) == [CONF, "/boot/efi/loader/loader.conf", "/boot/efi/loader/entries/*.conf"]
    assert kstub.inputs({}) == [CONF, "/boot/efi/loader/loader.conf", "/boot/efi/loader/entries/*.conf"]
    assert sorted(p for p, t in layout().items() if t is not None) == [
        "/boot/efi/loader/entries/Pop_OS-current.conf", "/boot/efi/loader/entries/Pop_OS-oldkern.conf",
        "/boot/efi/loader/entries/Recovery-B4C2-1F7E.conf", "/boot/efi/loader/loader.conf", CONF]
    assert kstub.outputs(CTX, {}) == kstub.inputs(CTX)


# ---- planning --------------------------------------------------------------------------------------------
def test_adds_to_user_kernel_options_and_to_the_entries_kernelstub_wrote():
    files = layout()
    res = planned(files, VFIO)
    assert res["files"] == {
        CONF: {"content": kernelstub_json(POP_OPTIONS.split() + WORDS), "mode": None},
        CURRENT: {"content": entry(POP_OPTIONS + " " + " ".join(WORDS)), "mode": None},
        OLDKERN: {"content": entry(POP_OPTIONS + " " + " ".join(WORDS), "oldkern"), "mode": None},
    }
    assert res["commands"] == [["kernelstub", "--preserve-live-mode"]]
    assert res["config_path"] == CONF and res["warnings"] == [] and res["errors"] == []
    # only the kernel_options array changed: the 'default' section and every other key are byte for byte
    new = res["files"][CONF]["content"]
    assert new.startswith(text(CONF).split('    "kernel_options": [\n      "quiet",\n      "loglevel=0"')[0])
    assert new.endswith('      "vfio-pci.ids=10de:1e87,10de:10f8"\n    ],\n    "esp_path": "/boot/efi",\n    "setup_loader": true,\n'
                        '    "manage_mode": true,\n    "force_update": false,\n    "live_mode": false,\n    "config_rev": 3\n  }\n}')
    assert json.loads(new)["default"]["kernel_options"] == ["quiet", "splash"]


def test_replaces_in_place_and_removes_without_reordering():
    files = layout()
    files[CONF] = kernelstub_json(["quiet", "vfio-pci.ids=1002:67df", "loglevel=0", "splash", "amd_iommu=on"])
    files[CURRENT] = entry("quiet vfio-pci.ids=1002:67df loglevel=0 splash amd_iommu=on")
    entries = kp.validate([{"name": "vfio-pci.ids", "value": "10de:1e87,10de:10f8"},
                           {"name": "amd_iommu", "value": "on", "state": "absent"}, {"name": "splash", "state": "absent"}])
    res = planned(files, entries)
    ids = "vfio-pci.ids=10de:1e87,10de:10f8"
    assert json.loads(res["files"][CONF]["content"])["user"]["kernel_options"] == ["quiet", ids, "loglevel=0"]
    assert res["files"][CONF]["content"] == kernelstub_json(["quiet", ids, "loglevel=0"])
    assert res["files"][CURRENT]["content"] == entry(f"quiet {ids} loglevel=0")
    # the oldkern entry still had the old words: it gets the same edit, and a warning says it differed
    assert res["files"][OLDKERN]["content"] == entry(f"quiet loglevel=0 systemd.show_status=false {ids}", "oldkern")
    assert res["warnings"] == [f"{OLDKERN} does not carry {CONF}'s user.kernel_options (it was edited by hand?): "
                               "kernelstub rewrites it from the configuration at its next run"]


def test_the_recovery_entry_and_loader_conf_are_never_touched():
    files = layout()
    res = planned(files, VFIO + kp.validate([{"name": "quiet", "state": "absent"}]))
    assert RECOVERY not in res["files"] and "/boot/efi/loader/loader.conf" not in res["files"]
    assert text(RECOVERY).startswith("title Pop!_OS recovery\n") and "options  boot=casper" in text(RECOVERY)
    assert res["files"][CURRENT]["content"] == entry("loglevel=0 systemd.show_status=false splash " + " ".join(WORDS))


def test_nothing_to_do_writes_nothing_but_still_runs_kernelstub():
    files = layout()
    res = kstub.plan(files, kp.validate([{"name": "splash"}, {"name": "nomodeset", "state": "absent"}]), CTX)
    assert res["files"] == {} and res["errors"] == [] and res["commands"] == [["kernelstub", "--preserve-live-mode"]]


def test_removing_every_option_leaves_an_empty_array():
    files = layout()
    names = ("quiet", "loglevel", "systemd.show_status", "splash")
    res = planned(files, kp.validate([{"name": n, "state": "absent"} for n in names]))
    assert res["files"][CONF]["content"] == kernelstub_json([])
    assert '"kernel_options": [],\n    "esp_path"' in res["files"][CONF]["content"]
    assert res["files"][CURRENT]["content"] == f"title Pop!_OS\nlinux /EFI/Pop_OS-{UUID}/vmlinuz.efi\n" \
                                               f"initrd /EFI/Pop_OS-{UUID}/initrd.img\noptions root=UUID={UUID} ro\n"
    # from an empty array the items come back in kernelstub's layout
    back = planned(applied(files, res), kp.validate([{"name": "iommu", "value": "pt"}]))
    assert back["files"][CONF]["content"] == kernelstub_json(["iommu=pt"])


def test_a_file_with_a_final_newline_and_crlf_entries_keeps_them():
    files = layout()
    files[CONF] = text(CONF) + "\n"
    files[CURRENT] = text(CURRENT).replace("\n", "\r\n")
    res = planned(files, VFIO)
    assert res["files"][CONF]["content"] == kernelstub_json(POP_OPTIONS.split() + WORDS) + "\n"
    assert res["files"][CURRENT]["content"] == entry(POP_OPTIONS + " " + " ".join(WORDS)).replace("\n", "\r\n")


def test_an_inline_array_stays_inline_and_a_legacy_string_stays_a_string():
    files = layout()
    data = json.loads(text(CONF))
    files[CONF] = json.dumps(data)                                       # everything on one line
    res = planned(files, VFIO)
    assert res["files"][CONF]["content"] == json.dumps(dict(data, user=dict(data["user"], kernel_options=POP_OPTIONS.split() + WORDS)))
    data["user"]["kernel_options"] = "quiet splash"                      # config_rev 2 kept a string
    files[CONF] = json.dumps(data, indent=2)
    res = planned(files, VFIO)
    assert json.loads(res["files"][CONF]["content"])["user"]["kernel_options"] == "quiet splash " + " ".join(WORDS)
    assert res["files"][CONF]["content"] == files[CONF].replace('"quiet splash"', f'"quiet splash {" ".join(WORDS)}"')


def test_other_esp_setup_loader_off_and_live_mode_are_warned():
    files = layout()
    data = json.loads(text(CONF))
    data["user"].update(esp_path="/efi", setup_loader=False, live_mode=True)
    files[CONF] = json.dumps(data, indent=2)
    res = kstub.plan(files, VFIO, CTX)
    assert res["errors"] == []
    assert res["warnings"] == [
        f"{CONF} names the ESP '/efi' but /boot/efi was searched for the loader entries: kernelstub writes them below '/efi'",
        f"{CONF} has live_mode true: 'kernelstub --preserve-live-mode' does nothing in a live session; run 'kernelstub' "
        "once by hand on the installed system",
        f"{CONF} has setup_loader false: kernelstub writes no systemd-boot entries here; the options reach the firmware "
        "boot entry only when kernelstub runs"]


def test_no_entry_written_by_kernelstub_is_warned():
    files = {p: t for p, t in layout().items() if p != CURRENT and p != OLDKERN}
    res = kstub.plan(files, VFIO, CTX)
    assert res["errors"] == [] and sorted(res["files"]) == [CONF]
    assert res["warnings"] == ["no loader entry written by kernelstub below /boot/efi/loader/entries: running kernelstub "
                               "writes them"]


# ---- refused layouts ---------------------------------------------------------------------------------------
def test_no_configuration_is_an_error():
    res = kstub.plan({CONF: None}, VFIO, CTX)
    assert res["files"] == {} and res["commands"] == []
    assert res["errors"] == [f"{CONF} does not exist: this is not a kernelstub layout, nothing was changed (run "
                             "'kernelstub' once to write it, or set vfio_bootloader to the bootloader really in use)"]


def test_kernelstubs_own_sample_is_not_json_and_is_refused():
    files = layout("kernelstub-sample")
    assert files[CONF].rstrip().endswith("},\n}")                      # the trailing comma of data/config/kernelstub.SAMPLE
    res = kstub.plan(files, VFIO, CTX)
    assert res["files"] == {} and res["commands"] == []
    assert len(res["errors"]) == 1 and res["errors"][0].startswith(f"{CONF} is not valid JSON (")
    assert res["errors"][0].endswith("kernelstub cannot read it either: fix it, or remove it and run 'kernelstub' to "
                                     "write it anew")


@pytest.mark.parametrize("user,message", [
    (None, "has no 'user' section: run 'kernelstub' once, it copies the 'default' section there "
           "(kernelstub/config.py load_config)"),
    ({"esp_path": "/boot/efi"}, "has no list of strings in user.kernel_options: kernelstub stops on it ('Malformed "
                                "configuration', application.py); fix the file"),
    ({"kernel_options": ["quiet", 3]}, "has no list of strings in user.kernel_options: kernelstub stops on it ('Malformed "
                                       "configuration', application.py); fix the file"),
])
def test_broken_configurations_are_refused(user, message):
    data = json.loads(text(CONF))
    if user is None:
        del data["user"]
    else:
        data["user"] = user
    res = kstub.plan(dict(layout(), **{CONF: json.dumps(data, indent=2)}), VFIO, CTX)
    assert res["errors"] == [f"{CONF} {message}"] and res["files"] == {}


# ---- read-back ---------------------------------------------------------------------------------------------
def test_next_boot_reads_the_default_entry_of_loader_conf():
    files = layout()
    res = planned(files, VFIO)
    nb = kstub.next_boot(applied(files, res), CTX)
    assert nb["errors"] == [] and nb["warnings"] == []
    assert nb["source"] == CURRENT
    assert nb["cmdline"] == f"root=UUID={UUID} ro {POP_OPTIONS} {' '.join(WORDS)}"
    assert kp.missing(nb["cmdline"], VFIO) == []
    assert [(e["title"], e["source"]) for e in nb["entries"]] == [
        ("Pop!_OS", CURRENT), ("Pop!_OS", OLDKERN), ("Pop!_OS recovery", RECOVERY)]
    assert kp.missing(kstub.next_boot(files, CTX)["cmdline"], VFIO) == VFIO          # before the plan: all missing


def test_next_boot_follows_a_glob_default_and_reports_unknown_ones():
    files = layout()
    files["/boot/efi/loader/loader.conf"] = "timeout 5\ndefault recovery-*\n"
    nb = kstub.next_boot(files, CTX)
    assert nb["source"] == RECOVERY and nb["warnings"] == []
    files["/boot/efi/loader/loader.conf"] = "default nothing-here\n"
    nb = kstub.next_boot(files, CTX)
    assert nb["source"] == CURRENT
    assert nb["warnings"] == ["/boot/efi/loader/loader.conf: default 'nothing-here' matches no entry"]
    files["/boot/efi/loader/loader.conf"] = "default @saved\n"
    nb = kstub.next_boot(files, CTX)
    assert nb["source"] == CURRENT and nb["warnings"] == [
        "/boot/efi/loader/loader.conf: default '@saved' is decided by an EFI variable at boot; the entry kernelstub "
        "marks current is reported"]


def test_next_boot_without_entries_is_an_error():
    nb = kstub.next_boot({CONF: text(CONF)}, CTX)
    assert nb["cmdline"] is None
    assert nb["errors"] == ["no loader entry below /boot/efi/loader/entries/: kernelstub did not write any (setup_loader false?)"]


def test_registered_under_its_name():
    assert config.loader("kernelstub") is kstub
