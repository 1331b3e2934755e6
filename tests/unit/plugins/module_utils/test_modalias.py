"""kernel_modules of the PCI devices: the running kernel's modules.alias matched against each device's modalias.

The sysroot tests use lines copied from a real kernel's modules.alias (Debian's 6.12; the nvidia
lines from the NVIDIA driver's module). The modprobe tests check the parsing against kmod itself:
the kernel of this machine when it has a modules dir, the kernels below ``$EXLIAR_VFIO_MODULES_BASE``
(a directory holding ``lib/modules/<version>``, e.g. an unpacked kernel package after ``depmod -b``),
and a modules dir made here whose built-in aliases depmod indexes.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import random
import shutil
import subprocess

import pytest

from helpers import (
    CARD_PCI, INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, NVIDIA_UCSI, NVIDIA_USB, NVME, ROOT_PORT,
    by_address, dev_file, fs_of, make_unreadable_dir, remove, write,
)

from ansible_collections.exliar.vfio.plugins.module_utils._kmod import PciAliasMatcher, module_dir, pci_alias_matcher
from ansible_collections.exliar.vfio.plugins.module_utils._pci import scan_pci
from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

KVER = "6.1.0-18-amd64"  # the kernel of the unit-test profile

MODULES_ALIAS = """\
# Aliases extracted from modules themselves.
alias usb:v1D6Bp0003d*dc*dsc*dp*ic*isc*ip*in* xhci_hcd
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000012D2d*sv*sd*bc03sc*i* nouveau
alias pci:v000010DEd*sv*sd*bc03sc00i00* nvidia
alias pci:v000010DEd*sv*sd*bc03sc02i00* nvidia
alias pci:v000010DEd*sv*sd*bc04sc03i00* snd_hda_intel
alias pci:v00008086d*sv*sd*bc04sc03i00* snd_hda_intel
alias pci:v00008086d0000A348sv*sd*bc*sc*i* snd_hda_intel
alias pci:v00008086d0000A348sv*sd*bc*sc*i* snd_soc_avs
alias pci:v00008086d0000A348sv*sd*bc*sc*i* snd_sof_pci_intel_cnl
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias pci:v00008086d00003E98sv*sd*bc03sc*i* i915
alias pci:v00001002d000073BFsv*sd*bc*sc*i* amdgpu
alias pci:v00001002d000073A5sv*sd*bc*sc*i* amdgpu
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00008086d000015BCsv*sd*bc*sc*i* e1000e
alias pci:v000017CBd00000309sv00001C5Dsd00002025bc*sc*i* mhi_pci_generic
alias pci:v00008086d*sv00001028sd*bc01sc04i00* ahci
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d00008808sv00001CC8sd00000001bc0Csc03iFE* pch_udc
alias acpi*:PNP0A08:* pci_root
alias of:N*T*Cnvidia,tegra210-xusbC* xhci_tegra
"""


def modalias(vendor: str, device: str, klass: str, subsys: str = "0000:0000") -> str:
    """The modalias sysfs shows for a device (the same layout the lab's builder writes)."""
    sv, sd = subsys.split(":")
    return (f"pci:v0000{vendor.upper()}d0000{device.upper()}sv0000{sv.upper()}sd0000{sd.upper()}"
            f"bc{klass[0:2].upper()}sc{klass[2:4].upper()}i{klass[4:6].upper()}")


def alias_root(make_sysroot, alias=MODULES_ALIAS, **kw):
    root = make_sysroot(**kw)
    mdir = module_dir(fs_of(root), KVER)
    if alias is None:
        remove(root, f"{mdir}/modules.alias")
    else:
        write(root, f"{mdir}/modules.alias", alias)
    return root, mdir


def matcher_of(root, alias=MODULES_ALIAS, **files):
    """The matcher of a bare modules dir below ``root`` (the matcher reads nothing else)."""
    mdir = f"usr/lib/modules/{KVER}"
    write(root, f"{mdir}/modules.dep", "")
    if alias is not None:
        write(root, f"{mdir}/modules.alias", alias)
    for name, content in files.items():
        write(root, f"{mdir}/{name.replace('_', '.')}", content)
    fs = fs_of(root)
    return pci_alias_matcher(fs, KVER), fs


@pytest.fixture(scope="module")
def shared_match(tmp_path_factory):
    return matcher_of(tmp_path_factory.mktemp("modalias"))


def test_every_device_gets_the_modules_that_could_claim_it(make_sysroot):
    root, mdir = alias_root(make_sysroot)
    fs = fs_of(root)
    devs = by_address([d.as_fact() for d in scan_pci(fs)])
    assert devs[NVIDIA_GPU]["kernel_modules"] == ["nouveau", "nvidia"]
    assert devs[NVIDIA_AUDIO]["kernel_modules"] == ["snd_hda_intel"]
    assert devs[NVIDIA_USB]["kernel_modules"] == ["xhci_pci"]  # a class match: any vendor's xHCI
    assert devs["0000:00:14.0"]["kernel_modules"] == ["xhci_pci"]
    assert devs[INTEL_IGPU]["kernel_modules"] == ["i915"]
    assert devs[NVME]["kernel_modules"] == ["nvme"]
    assert devs["0000:00:1f.6"]["kernel_modules"] == ["e1000e"]
    assert devs[NVIDIA_UCSI]["kernel_modules"] == []
    assert devs[ROOT_PORT]["kernel_modules"] == []
    assert fs.warnings == []


def test_modules_alias_is_read_once_per_scan(make_sysroot, monkeypatch):
    root, mdir = alias_root(make_sysroot)
    reads = []
    original = RootFS.read_text

    def counting(self, rel, expected=False):
        reads.append(rel)
        return original(self, rel, expected)

    monkeypatch.setattr(RootFS, "read_text", counting)
    devices = scan_pci(fs_of(root), with_names=False)
    assert len(devices) == 11
    assert reads.count(f"{mdir}/modules.alias") == 1


def test_a_device_on_vfio_pci_still_lists_its_drivers(make_sysroot):
    pci = [dict(d, driver="vfio-pci") if d["address"] in (NVIDIA_GPU, NVIDIA_AUDIO) else d for d in CARD_PCI]
    root, mdir = alias_root(make_sysroot, pci=pci)
    devs = by_address([d.as_fact() for d in scan_pci(fs_of(root))])
    assert devs[NVIDIA_GPU]["driver"] == "vfio-pci"
    assert devs[NVIDIA_GPU]["kernel_modules"] == ["nouveau", "nvidia"]
    assert devs[NVIDIA_AUDIO]["kernel_modules"] == ["snd_hda_intel"]


@pytest.mark.parametrize("alias,want", [
    (modalias("10de", "1e87", "030000", "1462:3721"), ["nouveau", "nvidia"]),
    (modalias("10de", "1e87", "030200"), ["nouveau", "nvidia"]),  # 3D controller
    (modalias("10de", "1e87", "038000"), ["nouveau"]),  # nvidia matches 0300 and 0302 only
    (modalias("12d2", "0018", "030000"), ["nouveau"]),
    (modalias("8086", "a348", "040300"), ["snd_hda_intel", "snd_soc_avs", "snd_sof_pci_intel_cnl"]),
    (modalias("8086", "51c8", "040300"), ["snd_hda_intel"]),  # any Intel HDA by class
    (modalias("8086", "51c8", "040100"), []),
    (modalias("1002", "73bf", "030000", "1002:0e3a"), ["amdgpu"]),
    (modalias("1002", "73a5", "038000"), ["amdgpu"]),  # amdgpu lists ids, whatever the class
    (modalias("1002", "73a6", "030000"), []),
    (modalias("1b21", "2142", "0c0330"), ["xhci_pci"]),  # i30 and the trailing *
    (modalias("1b21", "2142", "0c0320"), []),  # EHCI is not xHCI
    (modalias("17cb", "0309", "ff0000", "1c5d:2025"), ["mhi_pci_generic"]),  # exact subsystem
    (modalias("17cb", "0309", "ff0000", "1c5d:2026"), []),
    (modalias("8086", "a352", "010400", "1028:0815"), ["ahci"]),  # exact subsystem vendor, any device
    (modalias("8086", "a352", "010400", "1462:7b17"), []),
    (modalias("1022", "7901", "010601"), ["ahci"]),
    (modalias("8086", "8808", "0c03fe", "1cc8:0001"), ["pch_udc"]),
    ("pci:v000010DEd00001E87sv00001462sd00003721bc03sc00i00", ["nouveau", "nvidia"]),
    ("", []),
    (None, []),
])
def test_fields_and_wildcards(shared_match, alias, want):
    match, fs = shared_match
    assert match(alias) == want
    assert match(alias) == want  # a second ask comes from the cache, not a list it handed out
    assert fs.warnings == []


def test_question_mark_matches_one_character(tmp_path):
    match, fs = matcher_of(tmp_path, MODULES_ALIAS + (
        "alias pci:v000010DEd00001E8?sv*sd*bc*sc*i* turing_q\n"
        "alias pci:v0000100?d*sv*sd*bc03sc*i* vendor_q\n"
        "alias pci:v*d*sv*sd*bc0?sc80i0? class_q\n"))
    assert match(modalias("10de", "1e87", "030000")) == ["nouveau", "nvidia", "turing_q"]
    assert match(modalias("10de", "1e8f", "030000")) == ["nouveau", "nvidia", "turing_q"]
    assert match(modalias("10de", "1e97", "030000")) == ["nouveau", "nvidia"]
    assert match(modalias("1002", "73bf", "030000")) == ["amdgpu", "vendor_q"]
    assert match(modalias("1010", "0001", "030000")) == []
    assert match(modalias("10de", "1ad9", "0c8000")) == ["class_q"]
    assert match(modalias("10de", "1ad9", "0c8010")) == []  # no trailing *: i0? is exactly two characters


def test_malformed_lines_are_ignored(tmp_path):
    match, fs = matcher_of(tmp_path, (
        "alias pci:v000010DEd*sv*sd*bc03sc*i*\n"  # no module
        "alias pci:v000010DEd*sv*sd*bc03sc*i* two modules\n"
        "alias\n"
        "garbage line\n"
        "\n"
        "   alias pci:v000010DEd*sv*sd*bc03sc*i* indented\n"
        "alias pci:v000010DEd*sv*sd*bc04sc03i00* snd_hda_intel\n"
        "alias pci:v000010DE* other_layout\n"  # kept: modprobe matches it as a whole string too
        "alias pci:v000010DEd*sv*sd*bc03sc*i* no_newline_at_the_end"))
    assert match(modalias("10de", "1e87", "030000")) == ["no_newline_at_the_end", "other_layout"]
    assert match(modalias("10de", "10f8", "040300")) == ["other_layout", "snd_hda_intel"]
    assert match(modalias("1002", "73bf", "030000")) == []
    assert match("pci:garbage") == []
    assert fs.warnings == []


def test_a_modalias_of_another_layout_is_matched_as_a_whole(tmp_path):
    match, fs = matcher_of(tmp_path)
    assert match("pci:v000010DEd00001E87sv00001462sd00003721bc03sc00i00extra") == ["nouveau", "nvidia"]
    assert match("pci:v000010DEd00001E87") == []


def test_missing_modules_alias_warns(make_sysroot):
    root, mdir = alias_root(make_sysroot, alias=None, pci=CARD_PCI)
    fs = fs_of(root)
    devs = by_address([d.as_fact() for d in scan_pci(fs)])
    assert all(d["kernel_modules"] == [] for d in devs.values())
    assert fs.warnings == [f"{mdir}/modules.alias: missing (depmod not run); the kernel_modules of the PCI devices are unknown"]


def test_unreadable_modules_alias_warns_once(make_sysroot):
    root, mdir = alias_root(make_sysroot, pci=CARD_PCI)
    make_unreadable_dir(root, f"{mdir}/modules.alias")
    fs = fs_of(root)
    assert all(d.kernel_modules == [] for d in scan_pci(fs))
    assert len(fs.warnings) == 1 and fs.warnings[0].startswith(f"{mdir}/modules.alias: cannot read")


def test_running_kernel_without_modules_dir_is_quiet(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, os={"kernel": KVER, "kernels": ["6.1.0-21-amd64"]})
    write(root, "usr/lib/modules/6.1.0-21-amd64/modules.alias", MODULES_ALIAS)  # another kernel's: not used
    fs = fs_of(root)
    assert all(d.kernel_modules == [] for d in scan_pci(fs))
    assert fs.warnings == []


def test_unknown_running_kernel_is_quiet_here(make_sysroot):
    root, mdir = alias_root(make_sysroot, pci=CARD_PCI)
    remove(root, "proc/sys/kernel/osrelease")
    fs = fs_of(root)
    assert all(d.kernel_modules == [] for d in scan_pci(fs))
    assert fs.warnings == ["proc/sys/kernel/osrelease: missing"]  # the kernel facts' own warning, nothing more
    assert pci_alias_matcher(fs, None)(modalias("10de", "1e87", "030000")) == []


def test_device_without_modalias_file(make_sysroot):
    root, mdir = alias_root(make_sysroot, pci=CARD_PCI)
    remove(root, dev_file(NVIDIA_GPU, "modalias"))
    fs = fs_of(root)
    devs = by_address([d.as_fact() for d in scan_pci(fs)])
    assert devs[NVIDIA_GPU]["kernel_modules"] == []
    assert devs[NVIDIA_AUDIO]["kernel_modules"] == ["snd_hda_intel"]
    assert fs.warnings == []


def test_no_modalias_at_all_reads_no_alias_file(make_sysroot, monkeypatch):
    root, mdir = alias_root(make_sysroot, pci=CARD_PCI)
    for d in CARD_PCI:
        remove(root, dev_file(d["address"], "modalias"))
    seen = []
    original = RootFS.read_text
    monkeypatch.setattr(RootFS, "read_text", lambda self, rel, expected=False: seen.append(rel) or original(self, rel, expected))
    assert all(d.kernel_modules == [] for d in scan_pci(fs_of(root), with_names=False))
    assert not [r for r in seen if "modules.alias" in r]


BUILTIN_MODINFO = (
    b"xhci_pci.file=drivers/usb/host/xhci-pci\0xhci_pci.license=GPL\0"
    b"xhci_pci.alias=pci:v*d*sv*sd*bc0Csc03i30*\0"
    b"ahci.alias=pci:v*d*sv*sd*bc01sc06i01*\0ahci.alias=pci:v00008086d0000A352sv*sd*bc*sc*i*\0"
    b"vfio.alias=devname:vfio/vfio\0"  # not a PCI alias
    b"nvme-core.alias=pci:v*d*sv*sd*bc01sc08i02*\0"  # a dash in the name, as KBUILD_MODNAME never has it
    b"broken_record_without_a_dot\0.alias=pci:v*d*sv*sd*bc*sc*i*\0"
)


def test_builtin_drivers_are_listed_too(tmp_path):
    match, fs = matcher_of(tmp_path, MODULES_ALIAS.replace("alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n", ""),
                           modules_builtin_modinfo=BUILTIN_MODINFO)
    assert match(modalias("1b21", "2142", "0c0330")) == ["xhci_pci"]
    assert match(modalias("8086", "a352", "010601")) == ["ahci"]  # two patterns of one module: listed once
    assert match(modalias("144d", "a808", "010802")) == ["nvme", "nvme_core"]
    assert match(modalias("10de", "1e87", "030000")) == ["nouveau", "nvidia"]
    assert fs.warnings == []


def test_builtin_alias_text_file(tmp_path):
    match, fs = matcher_of(tmp_path, "", modules_builtin_alias=(
        "alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n"
        "pci:v00001AF4d00001041sv*sd*bc*sc*i* virtio_pci\n"
        "alias usb:v*p*d*dc09dsc*dp*ic*isc*ip*in* usbcore\n"
        "alias pci:v*d*sv*sd*bc0Csc03i20*\n"))
    assert match(modalias("1b21", "2142", "0c0330")) == ["xhci_pci"]
    assert match(modalias("1af4", "1041", "020000", "1af4:1041")) == ["virtio_pci"]
    assert match(modalias("8086", "a36d", "0c0320")) == []


def test_builtin_drivers_without_modules_alias(make_sysroot):
    root, mdir = alias_root(make_sysroot, alias=None, pci=CARD_PCI)
    write(root, f"{mdir}/modules.builtin.modinfo", BUILTIN_MODINFO)
    fs = fs_of(root)
    match = pci_alias_matcher(fs, KVER)
    assert match(modalias("1b21", "2142", "0c0330")) == ["xhci_pci"]
    assert len(fs.warnings) == 1 and "modules.alias: missing" in fs.warnings[0]


@pytest.mark.parametrize("how", ["text, asked later", "text, asked up front", "built in"])
def test_buckets_give_what_fnmatch_over_every_pattern_gives(how):
    """The buckets never lose a match: compare with plain fnmatch over every pattern."""
    rng = random.Random(20240202)
    vendors = ["000010DE", "00008086", "00001002", "00001000", "00001AF4"]
    devices = ["00001E87", "0000A348", "000073BF", "00001041", "00000A01"]

    def field(choices, wild_chance):
        r = rng.random()
        if r < wild_chance:
            return "*"
        value = rng.choice(choices)
        if r < wild_chance + (1 - wild_chance) / 3:
            pos = rng.randrange(len(value))
            value = value[:pos] + rng.choice(["?", "*", "[0-7]"]) + value[pos + 1:]
        return value

    entries = []
    for n in range(300):
        fields = [field(vendors, 0.1), field(devices, 0.3), field(vendors, 0.8), field(devices, 0.8),
                  field(["01", "03", "04", "0C"], 0.6), field(["00", "03", "80"], 0.7), field(["00", "30", "02"], 0.8)]
        tail = "*" if rng.random() < 0.9 else ""
        entries.append(("pci:v{}d{}sv{}sd{}bc{}sc{}i{}".format(*fields) + tail, f"mod{n % 97}"))
    aliases = []
    for n in range(300):
        aliases.append("pci:v{}d{}sv{}sd{}bc{}sc{}i{}".format(
            rng.choice(vendors), rng.choice(devices), rng.choice(vendors), rng.choice(devices),
            rng.choice(["01", "03", "04", "0C"]), rng.choice(["00", "03", "80"]), rng.choice(["00", "30", "02"])))
    text = "".join(f"alias {p} {m}\n" for p, m in entries)
    if how == "built in":
        match = PciAliasMatcher(builtin=entries)
    else:
        match = PciAliasMatcher(text, modaliases=aliases[:150] if how == "text, asked up front" else ())
    hits = 0
    for alias in aliases:
        want = sorted({m for p, m in entries if fnmatch.fnmatchcase(alias, p)})
        assert match(alias) == want, alias
        hits += bool(want)
    assert hits > 100


# ---- against kmod's own modprobe -------------------------------------------------------------

MODPROBE = shutil.which("modprobe") or next((p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.path.exists(p)), None)
DEPMOD = shutil.which("depmod") or next((p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.path.exists(p)), None)

# Well-known devices: (vendor, device, class, subsystem, a module that must be among the answers when
# the kernel has it in modules.alias).
WELL_KNOWN = [
    ("10de", "1e87", "030000", "1462:3721", "nouveau"),
    ("10de", "10f8", "040300", "1462:3721", "snd_hda_intel"),
    ("10de", "1ad8", "0c0330", "1462:3721", "xhci_pci"),
    ("8086", "a348", "040300", "1462:7b17", "snd_hda_intel"),
    ("8086", "3e98", "030000", "1462:7b17", "i915"),
    ("8086", "a36d", "0c0330", "1462:7b17", "xhci_pci"),
    ("1002", "73bf", "030000", "1002:0e3a", "amdgpu"),
    ("144d", "a808", "010802", "144d:a801", "nvme"),
    ("8086", "15bc", "020000", "1462:7b17", "e1000e"),
]


def modprobe_resolve(base: str, kver: str, alias: str) -> list:
    """``modprobe -R``, without the host's modprobe.d (whose aliases the facts do not read either)."""
    r = subprocess.run([MODPROBE, "-C", "/dev/null", "-d", base, "-S", kver, "-R", alias],
                       capture_output=True, text=True, timeout=30, check=False)
    return sorted(set(r.stdout.split())) if r.returncode == 0 else []


def builtin_names(fs, kver) -> set:
    text = fs.read_text(f"{module_dir(fs, kver)}/modules.builtin") or ""
    return {line.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_") for line in text.split()}


def real_kernels() -> list:
    """(base, kernel) of the real modules dirs to check: the running kernel's, those below $EXLIAR_VFIO_MODULES_BASE."""
    found = []
    running = os.uname().release
    mdir = module_dir(RootFS("/"), running)
    if mdir and os.path.exists(f"/{mdir}/modules.alias"):
        found.append(("/", running))
    base = os.environ.get("EXLIAR_VFIO_MODULES_BASE")
    for kver in sorted(os.listdir(f"{base}/lib/modules")) if base and os.path.isdir(f"{base}/lib/modules") else []:
        if os.path.exists(f"{base}/lib/modules/{kver}/modules.alias"):
            found.append((base, kver))
    return found


def own_modaliases() -> list:
    out = []
    for path in sorted(glob.glob("/sys/bus/pci/devices/*/modalias")):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                out.append(f.read().strip())
        except OSError:
            continue
    return [a for a in out if a]


@pytest.mark.skipif(MODPROBE is None, reason="no modprobe on this machine")
@pytest.mark.parametrize("base,kver", real_kernels() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no modules dir with modules.alias for the running kernel (set EXLIAR_VFIO_MODULES_BASE to check another)"))])
def test_a_real_kernel_agrees_with_modprobe(base, kver):
    fs = RootFS(base)
    match = pci_alias_matcher(fs, kver)
    assert len(match) > 0 and fs.warnings == []
    builtin = builtin_names(fs, kver)
    aliases = own_modaliases() + [modalias(v, d, c, s) for v, d, c, s, m in WELL_KNOWN]
    for alias in aliases:
        want, got = modprobe_resolve(base, kver, alias), match(alias)
        # modprobe stops at the first index that answers (modules, then built-in drivers); lspci -k and
        # the facts list both, so the built-in drivers may come on top of what modprobe says
        assert set(want) <= set(got) and set(got) - set(want) <= builtin, alias
    text = fs.read_text(f"{module_dir(fs, kver)}/modules.alias")
    for v, d, c, s, module in WELL_KNOWN:
        if f" {module}\n" in text:
            assert module in match(modalias(v, d, c, s)), (v, d, module)


@pytest.mark.skipif(MODPROBE is None or DEPMOD is None, reason="no modprobe/depmod on this machine")
def test_depmod_index_of_builtin_aliases_agrees_with_modprobe(tmp_path):
    """depmod indexes modules.builtin.modinfo: kmod's matching of real patterns against ours."""
    kver = "9.9.9-exliar-test"
    mdir = tmp_path / "lib/modules" / kver
    mdir.mkdir(parents=True)
    records, names = [], set()
    for line in MODULES_ALIAS.splitlines() + [
            "alias pci:v000010DEd00001E8?sv*sd*bc*sc*i* turing_q", "alias pci:v*d*sv*sd*bc0[CD]sc03i[23]0* bracket"]:
        parts = line.split()
        if len(parts) == 3 and parts[1].startswith("pci:"):
            records.append(f"{parts[2]}.alias={parts[1]}")
            names.add(parts[2])
    (mdir / "modules.builtin.modinfo").write_bytes("\0".join(records).encode() + b"\0")
    (mdir / "modules.builtin").write_text("".join(f"kernel/drivers/misc/{n}.ko\n" for n in sorted(names)))
    (mdir / "modules.order").write_text("")
    r = subprocess.run([DEPMOD, "-b", str(tmp_path), kver], capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0 or not (mdir / "modules.builtin.alias.bin").exists():
        pytest.skip(f"this depmod does not index built-in aliases: {r.stderr.strip()[:200]}")
    fs = RootFS(str(tmp_path))
    match = pci_alias_matcher(fs, kver)
    rng = random.Random(7)
    aliases = own_modaliases() + [modalias(v, d, c, s) for v, d, c, s, m in WELL_KNOWN] + [
        modalias("10de", "1e8f", "030000"), modalias("10de", "1e97", "038000"), modalias("1b21", "2142", "0d0320"),
        modalias("17cb", "0309", "ff0000", "1c5d:2025"), modalias("8086", "a352", "010400", "1028:0815"),
        modalias("8086", "8808", "0c03fe", "1cc8:0001"), modalias("1022", "7901", "010601"),
    ]
    for n in range(40):
        vendor = rng.choice(["10de", "8086", "1002", "17cb", "1022"])
        aliases.append(modalias(vendor, f"{rng.randrange(65536):04x}", rng.choice(["030000", "030200", "040300", "0c0330", "010802"])))
    assert sum(1 for a in aliases if match(a)) > 10
    for alias in aliases:
        assert match(alias) == modprobe_resolve(str(tmp_path), kver, alias), alias
