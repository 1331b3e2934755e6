"""The binding stage end to end: playbooks/vfio.yml (detect + bind) and playbooks/restore.yml run by
ansible-playbook, as a user runs them, over copies of lab sysroots; checked on the files below each
root and on the play recap. The sysroots are built from lab/profiles by lab/build_sysroot.py's build()
into this module's own directory (never lab/.sysroots, which test_lab.py runs the playbook over in
place) and copied once per host.

Every playbook run costs seconds, so one module fixture (``bind_lab``) does all runs, each over many
hosts at once (one inventory, one copied sysroot per host), the independent ones side by side:

1. apply: vfio.yml --diff over every host of HOSTS
2. again: vfio.yml on the hosts that were bound (changed=0) and on the drift host, whose bound card now
   reports another device id (refused);               in parallel: restore.yml on the restore host
3. accept: vfio.yml on the drift host with vfio_accept_hardware_change; in parallel: restore.yml again,
   and vfio.yml --check --diff over fresh copies (CHECK_HOSTS)

The tests only read what the runs left: recaps, messages, and full snapshots of each tree.
"""
from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from build_sysroot import build, load_profile, partition_of, profile_paths
from labrun import VENV_BIN
from sysroot_trees import Run, copy_root as _copy, differences, private_work_dir, tree

PROFILES = {p.stem: p for p in profile_paths()}
MODPROBE = "etc/modprobe.d/exliar-vfio.conf"
SCRIPT = "usr/local/sbin/exliar-vfio-pci-override"
RECORD = "var/lib/exliar-vfio/state/bind.json"
STATE = "var/lib/exliar-vfio"
JOURNAL = f"{STATE}/journal.jsonl"
BRIDGE_CLASSES = ("0600", "0604", "0609")

GTX480 = "dual-identical-gtx480-debian"
GT710 = "dual-identical-gt710-fedora"
NVME_GROUP = "gpu-nvme-shared-group"
SINGLE = "single-gpu-desktop"
APU = "apu-amd-dgpu-split-audio"
B550 = "b550-navi21-split-audio"

DRIFT_ADDR, DRIFT_OLD, DRIFT_NEW = "0000:03:00.0", "1002:744c", "1002:73bf"  # an RX 7900 replaced by an RX 6800
ADMIN_CONF = b"# the admin's own file, before exliar.vfio\noptions vfio-pci disable_vga=1\n"


# ---- the cases, read from the lab profiles ---------------------------------------------------

def _endpoints_of_group(p: dict, group) -> list:
    return [d["address"] for d in p["pci"] if d.get("group") == group and str(d["class"])[:4] not in BRIDGE_CLASSES]


def _connection_case():
    """A lab machine whose profile has a ``network`` section: (profile, ip, interface, NIC, its group's endpoints).

    Taken only where nothing else of the NIC's group holds a disk, so the connection is the one refusal."""
    for pid, path in sorted(PROFILES.items()):
        if not re.search(r"^network:", path.read_text(), re.M):
            continue
        p = load_profile(path)
        for iface, spec in (p.get("network") or {}).items():
            addrs = spec if isinstance(spec, list) else (spec or {}).get("addresses") or []
            ipv4 = [str(a).split("/", maxsplit=1)[0] for a in addrs if ":" not in str(a)]
            nic = next((d for d in p["pci"] if iface in (d.get("net") or [])), None)
            if not ipv4 or nic is None or nic.get("group") is None:
                continue
            group = _endpoints_of_group(p, nic["group"])
            if any(d.get("block") for d in p["pci"] if d["address"] in group):
                continue
            return {"profile": pid, "ip": ipv4[0], "iface": iface, "nic": nic["address"], "group": group}
    return None


def _mounted_case():
    """gpu-nvme-shared-group: the NVMe holding / and the whole IOMMU group it shares with the GPU."""
    p = load_profile(PROFILES[NVME_GROUP])
    root = next((m for m in p.get("mounts") or [] if m["mountpoint"] == "/"), None)
    if root is None:
        return None
    disk = (partition_of(root["block"]) or (root["block"],))[0]
    nvme = next(d for d in p["pci"] if disk in (d.get("block") or []))
    return {"profile": NVME_GROUP, "nvme": nvme["address"], "block": root["block"], "fstype": root.get("fstype", "ext4"),
            "group": _endpoints_of_group(p, nvme["group"])}


CONNECTION = _connection_case()
MOUNTED = _mounted_case()


def _make_modprobe_d_a_file(root: Path) -> None:
    target = root / "etc/modprobe.d"
    if target.is_dir():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not a directory\n")


def _make_sbin_a_file(root: Path) -> None:
    (root / "usr/local").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/sbin").write_text("not a directory\n")


def _admin_conf(root: Path) -> None:
    path = root / MODPROBE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ADMIN_CONF)
    path.chmod(0o600)


OK = "ok"
FAILED = "failed"
# host -> profile, vfio_devices, extra host vars, how to prepare the copy, the outcome of the first run
HOSTS = {
    "gtx480-second": dict(profile=GTX480, devices=["0000:02:00.0"], outcome=OK),
    "gt710-second": dict(profile=GT710, devices=[{"address": "0A:00.0"}], outcome=OK),
    "nvme-group": dict(profile=NVME_GROUP, devices=["0000:04:00.0"], outcome=FAILED),
    "boot-refused": dict(profile=SINGLE, devices=["0000:02:00.0"], outcome=FAILED),
    "boot-allowed": dict(profile=SINGLE, devices=["0000:02:00.0"], vars={"vfio_allow_boot_display": True}, outcome=OK),
    "split-apu": dict(profile=APU, devices=[{"gpus": "discrete_except_boot"}], outcome=OK),
    "split-b550": dict(profile=B550, devices=["0000:08:00.0"], outcome=OK),
    "unknown": dict(profile=B550, devices=["0000:0e:00.0"], outcome=FAILED),
    "unknown-skipped": dict(profile=B550, devices=["0000:0e:00.0", "0000:08:00.0"],
                            vars={"vfio_allow_missing_devices": True}, outcome=OK),
    "bad-id": dict(profile=B550, devices=[{"id": "1002:73a"}], outcome=FAILED),
    "bridge": dict(profile=B550, devices=["0000:07:00.0"], outcome=FAILED),
    "conflict": dict(profile=B550, devices=["0000:08:00.0", {"address": "0000:08:00.0", "exclude": True}], outcome=FAILED),
    "conflict-companion": dict(profile=B550, devices=["0000:08:00.0", {"address": "0000:08:00.1", "exclude": True}],
                               outcome=FAILED),
    "two-selectors": dict(profile=B550, devices=[{"address": "0000:08:00.0", "id": "1002:73a5"}], outcome=FAILED),
    "modprobe-d-file": dict(profile=B550, devices=["0000:08:00.0"], prepare=_make_modprobe_d_a_file, outcome=FAILED),
    "sbin-file": dict(profile=GTX480, devices=["0000:02:00.0"], prepare=_make_sbin_a_file, outcome=FAILED),
    "drift": dict(profile=APU, devices=[DRIFT_ADDR], outcome=OK),
    "restore": dict(profile=GTX480, devices=["0000:02:00.0"], prepare=_admin_conf, outcome=OK),
}
if CONNECTION:
    HOSTS["connection-nic"] = dict(profile=CONNECTION["profile"], devices=CONNECTION["group"],
                                   vars={"vfio_connection_address": CONNECTION["ip"]}, outcome=FAILED)
if MOUNTED:
    HOSTS["mounted-disk"] = dict(profile=MOUNTED["profile"], devices=MOUNTED["group"], outcome=FAILED)
CHECK_HOSTS = {
    # the second GTX 480 (by address) and the ASMedia USB card (by id): every kind of line in one diff
    "check-gtx480": dict(profile=GTX480, devices=["0000:02:00.0", "0000:03:00.0"]),
}
RERUN = ["gtx480-second", "boot-allowed", "split-apu"]  # by address, softdeps of displaced drivers, ids
REFUSED = [h for h, spec in HOSTS.items() if spec["outcome"] == FAILED]


# ---- trees ---------------------------------------------------------------------------------

def _inventory(path: Path, hosts: dict, roots: dict) -> Path:
    # Several lab machines came with a hand-made vfio-pci configuration: the collection takes it over
    # (a host may set vfio_take_over_vfio_config: false to see the refusal).
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
                            "vfio_take_over_vfio_config": True,
                            "vfio_initramfs": False,  # the binding stage alone (test_initramfs.py covers the next one)
                            "vfio_bootloader_stage": False,  # and test_bootloader.py the one after
                            "vfio_plugin_default_dirs": False},
                   "hosts": {h: dict(spec.get("vars") or {}, vfio_root=str(roots[h]), vfio_devices=spec["devices"])
                             for h, spec in hosts.items()}}}
    path.write_text(yaml.safe_dump(inv, sort_keys=True))
    return path


def _set_device_id(root: Path, addr: str, ids: str) -> None:
    vendor, device = ids.split(":")
    (root / "sys/bus/pci/devices" / addr / "vendor").write_text(f"0x{vendor}\n")
    (root / "sys/bus/pci/devices" / addr / "device").write_text(f"0x{device}\n")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    yield from private_work_dir(tmp_path_factory, "bind")


@pytest.fixture(scope="module")
def bind_lab(work_dir):
    started = time.monotonic()
    work = work_dir
    profiles = {spec["profile"] for spec in list(HOSTS.values()) + list(CHECK_HOSTS.values())}
    bases = {pid: build(PROFILES[pid], work / "base") for pid in sorted(profiles)}  # never lab/.sysroots itself
    built = time.monotonic()
    roots = {}
    for host, spec in {**HOSTS, **CHECK_HOSTS}.items():
        roots[host] = _copy(bases[spec["profile"]], work / "roots" / host)
        if spec.get("prepare"):
            spec["prepare"](roots[host])
    inventory = _inventory(work / "inventory.yml", HOSTS, roots)
    check_inventory = _inventory(work / "check-inventory.yml", CHECK_HOSTS, roots)
    snaps = {"before": {h: tree(r) for h, r in roots.items()}}
    prepared = time.monotonic()

    runs = {"apply": Run(work, "apply", "playbooks/vfio.yml", "--diff", inventory=inventory).wait()}
    snaps["applied"] = {h: tree(r) for h, r in roots.items()}

    drift_record = json.loads((roots["drift"] / RECORD).read_text()) if (roots["drift"] / RECORD).exists() else None
    _set_device_id(roots["drift"], DRIFT_ADDR, DRIFT_NEW)
    snaps["drifted"] = tree(roots["drift"])
    again = Run(work, "again", "playbooks/vfio.yml", "--diff", "--limit", ",".join(RERUN + ["drift"]), inventory=inventory)
    restore = Run(work, "restore", "playbooks/restore.yml", "--diff", "--limit", "restore", inventory=inventory)
    runs.update(again=again.wait(), restore=restore.wait())
    snaps["again"] = {h: tree(roots[h]) for h in RERUN + ["drift"]}
    snaps["restored"] = tree(roots["restore"])

    accept = Run(work, "accept", "playbooks/vfio.yml", "--limit", "drift", "-e",
                 json.dumps({"vfio_accept_hardware_change": True}), inventory=inventory)
    restore2 = Run(work, "restore2", "playbooks/restore.yml", "--limit", "restore", inventory=inventory)
    check = Run(work, "check", "playbooks/vfio.yml", "--check", "--diff", inventory=check_inventory)
    runs.update(accept=accept.wait(), restore2=restore2.wait(), check=check.wait())
    snaps["restored2"] = tree(roots["restore"])
    snaps["checked"] = {h: tree(roots[h]) for h in CHECK_HOSTS}
    return {"roots": roots, "runs": runs, "snaps": snaps, "drift_record": drift_record, "seconds": time.monotonic() - started,
            "build": built - started, "prepare": prepared - built}


# ---- helpers for the assertions -----------------------------------------------------------------

def counts(lab, run: str, host: str) -> dict:
    got = lab["runs"][run].recap.get(host)
    assert got is not None, f"{host} is not in the recap of {run}: {lab['runs'][run].tail()}"
    return got


def assert_bound(lab, host: str, run: str = "apply") -> None:
    c = counts(lab, run, host)
    assert c["failed"] == 0 and c["unreachable"] == 0 and c["changed"] == 1, (c, lab["runs"][run].fatal.get(host))


def assert_refused(lab, host: str, *needles: str, run: str = "apply") -> str:
    """The host failed, changed nothing it reported, and its message says ``needles``; returns the message."""
    c = counts(lab, run, host)
    assert c["failed"] == 1 and c["changed"] == 0, c
    result = lab["runs"][run].fatal.get(host)
    assert result is not None, lab["runs"][run].tail()
    msg = result["msg"]
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def assert_untouched(lab, host: str, before: str = "before", after: str = "applied") -> None:
    diff = differences(lab["snaps"][before][host], lab["snaps"][after][host])
    assert diff == [], f"{host}: changed below the root: {diff[:20]}"


def read(lab, host: str, rel: str) -> str:
    return (lab["roots"][host] / rel).read_text()


def directives(text: str) -> list:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def label(facts: dict, addr: str) -> str:
    d = next(d for d in facts["pci_devices"] if d["address"] == addr)
    return " ".join(x for x in (d["vendor_name"], d["device_name"]) if x)


def test_every_host_ran_and_only_the_refused_ones_failed(bind_lab):
    run = bind_lab["runs"]["apply"]
    assert run.returncode == 2, run.tail()  # 2: some hosts failed, as planned
    assert sorted(run.recap) == sorted(HOSTS), run.tail()
    assert sorted(h for h, c in run.recap.items() if c["failed"]) == sorted(REFUSED), run.tail()
    assert all(c["unreachable"] == 0 for c in run.recap.values())
    runs = ", ".join(f"{name} {r.seconds:.1f}s" for name, r in bind_lab["runs"].items())
    print(f"\nbinding-stage lab: {len(HOSTS) + len(CHECK_HOSTS)} hosts in {bind_lab['seconds']:.1f}s: build "
          f"{bind_lab['build']:.1f}s, copies and snapshots {bind_lab['prepare']:.1f}s, runs: {runs}")


# ---- identical GPUs: the second one by address ------------------------------------------------

@pytest.mark.parametrize("host, second, other, shared", [
    ("gtx480-second", ["0000:02:00.0", "0000:02:00.1"], ["0000:01:00.0", "0000:01:00.1"], ["10de:06c0", "10de:0be5"]),
    ("gt710-second", ["0000:0a:00.0", "0000:0a:00.1"], ["0000:04:00.0", "0000:04:00.1"], ["10de:128b", "10de:0e0f"]),
])
def test_the_second_of_two_identical_gpus_is_bound_by_address(bind_lab, host, second, other, shared, tmp_path):
    assert_bound(bind_lab, host)
    conf = read(bind_lab, host, MODPROBE)
    assert "install vfio-pci /usr/local/sbin/exliar-vfio-pci-override $CMDLINE_OPTS" in directives(conf)
    script_path = bind_lab["roots"][host] / SCRIPT
    assert stat.S_IMODE(script_path.stat().st_mode) == 0o755
    script = script_path.read_text()
    devs = re.search(r'^DEVS="([^"]*)"$', script, re.M)
    assert devs and sorted(devs.group(1).split()) == second
    for addr in other:
        assert addr not in script and addr not in conf
    for path in (bind_lab["roots"][host] / "etc/modprobe.d").iterdir():  # the owner's vfio.conf too
        for line in directives(path.read_text()):
            if line.startswith("options vfio-pci") or line.startswith("options vfio_pci"):
                assert not any(i in line for i in shared), (path.name, line)
    proc = subprocess.run(["sh", "-n", str(script_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(read(bind_lab, host, RECORD))
    assert [d["address"] for d in record["devices"]] == second


# ---- refusals --------------------------------------------------------------------------------

def test_a_gpu_sharing_its_group_with_the_nvme_is_refused_naming_it(bind_lab):
    facts = bind_lab["runs"]["apply"].facts("nvme-group")
    msg = assert_refused(bind_lab, "nvme-group", "0000:04:00.0", "shares IOMMU group 0 with",
                         f"0000:01:00.0 {label(facts, '0000:01:00.0')} (nvme0n1", "vfio-pci takes a whole group")
    assert msg.startswith("refused, nothing changed")
    assert_untouched(bind_lab, "nvme-group")


def test_the_only_gpu_is_refused_as_the_boot_display(bind_lab):
    facts = bind_lab["runs"]["apply"].facts("boot-refused")
    assert_refused(bind_lab, "boot-refused", f"0000:02:00.0 {label(facts, '0000:02:00.0')} drives the boot display",
                   "vfio_allow_boot_display: true")
    assert_untouched(bind_lab, "boot-refused")


def test_the_only_gpu_with_vfio_allow_boot_display(bind_lab):
    assert_bound(bind_lab, "boot-allowed")
    lines = directives(read(bind_lab, "boot-allowed", MODPROBE))
    assert "options vfio-pci ids=10de:228b,10de:2489,10ee:5000,10ee:5001" in lines  # + the FPGA of its own vfio.conf
    vfio_conf = (bind_lab["roots"]["boot-allowed"] / "etc/modprobe.d/vfio.conf").read_text()
    assert "# disabled by exliar.vfio (playbooks/restore.yml brings it back): options vfio-pci ids=10ee:5000,10ee:5001" in vfio_conf
    assert "softdep nvidia pre: vfio-pci" in lines and "softdep snd_hda_intel pre: vfio-pci" in lines
    assert not (bind_lab["roots"]["boot-allowed"] / SCRIPT).exists()
    out = bind_lab["runs"]["apply"].stdout + bind_lab["runs"]["apply"].stderr
    assert "(allowed by vfio_allow_boot_display: true)" in out


@pytest.mark.skipif(CONNECTION is None, reason="no lab profile has a network section")
def test_the_nic_carrying_the_connection_is_refused(bind_lab):
    facts = bind_lab["runs"]["apply"].facts("connection-nic")
    assert facts["host_usage"]["connection"]["interfaces"] == [CONNECTION["iface"]]
    nic = CONNECTION["nic"]
    assert_refused(bind_lab, "connection-nic", f"{nic} {label(facts, nic)} ({CONNECTION['iface']}) carries the Ansible connection",
                   f"({CONNECTION['ip']} on {CONNECTION['iface']})", "vfio_allow_connection_nic: true")
    assert_untouched(bind_lab, "connection-nic")


@pytest.mark.skipif(MOUNTED is None, reason="gpu-nvme-shared-group has no mount table")
def test_the_disk_holding_the_root_filesystem_is_refused(bind_lab):
    nvme = MOUNTED["nvme"]
    facts = bind_lab["runs"]["apply"].facts("mounted-disk")
    msg = assert_refused(bind_lab, "mounted-disk", f"{nvme} {label(facts, nvme)}",
                         f"holds {MOUNTED['block']}, in use: / ({MOUNTED['fstype']})", "vfio_allow_mounted_disk: true")
    assert "shares IOMMU group" not in msg  # the whole group is selected: the disk is the one reason
    assert_untouched(bind_lab, "mounted-disk")


# ---- audio function in a group of its own -----------------------------------------------------

@pytest.mark.parametrize("host, gpu, audio", [("split-apu", "0000:03:00.0", "0000:03:00.1"),
                                              ("split-b550", "0000:08:00.0", "0000:08:00.1")])
def test_the_audio_function_in_its_own_group_is_bound_with_the_gpu(bind_lab, host, gpu, audio):
    assert_bound(bind_lab, host)
    facts = bind_lab["runs"]["apply"].facts(host)
    devs = {d["address"]: d for d in facts["pci_devices"]}
    assert devs[gpu]["iommu_group"] != devs[audio]["iommu_group"]
    ids = sorted(f"{devs[a]['vendor_id']}:{devs[a]['device_id']}" for a in (gpu, audio))
    conf = read(bind_lab, host, MODPROBE)
    assert f"options vfio-pci ids={','.join(ids)}" in directives(conf)
    assert re.search(rf"^# {re.escape(audio)} .*by id\)$", conf, re.M)
    assert [d["address"] for d in json.loads(read(bind_lab, host, RECORD))["devices"]] == [gpu, audio]
    assert not (bind_lab["roots"][host] / SCRIPT).exists()


# ---- idempotence, check mode -------------------------------------------------------------------

def test_a_second_run_changes_nothing(bind_lab):
    run = bind_lab["runs"]["again"]
    for host in RERUN:
        c = counts(bind_lab, "again", host)
        assert c["changed"] == 0 and c["failed"] == 0, (host, c, run.fatal.get(host))
        assert_untouched(bind_lab, host, "applied", "again")


def test_check_mode_shows_the_diff_and_changes_nothing(bind_lab):
    run = bind_lab["runs"]["check"]
    assert run.returncode == 0, run.tail()
    for host in CHECK_HOSTS:
        c = counts(bind_lab, "check", host)
        assert c["changed"] == 1 and c["failed"] == 0, (host, c)
        assert_untouched(bind_lab, host, "before", "checked")
    out = run.stdout
    assert "+++ after: /etc/modprobe.d/exliar-vfio.conf" in out
    assert "+install vfio-pci /usr/local/sbin/exliar-vfio-pci-override $CMDLINE_OPTS" in out
    assert "+options vfio-pci ids=1b21:1242" in out
    assert "+++ after: /usr/local/sbin/exliar-vfio-pci-override" in out


# ---- restore -----------------------------------------------------------------------------------

def test_restore_puts_every_file_back(bind_lab):
    run = bind_lab["runs"]["restore"]
    assert run.returncode == 0, run.tail()
    assert counts(bind_lab, "restore", "restore")["changed"] == 1
    snaps = bind_lab["snaps"]
    applied = snaps["applied"]["restore"]
    assert applied[MODPROBE][1] == 0o644 and applied[SCRIPT][0] == "file"  # the run did change them
    before = {k: v for k, v in snaps["before"]["restore"].items() if not (k == STATE or k.startswith(STATE + "/"))}
    after = {k: v for k, v in snaps["restored"].items() if not (k == STATE or k.startswith(STATE + "/"))}
    assert differences(before, after) == []
    conf = bind_lab["roots"]["restore"] / MODPROBE
    assert conf.read_bytes() == ADMIN_CONF and stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert not (bind_lab["roots"]["restore"] / "usr/local").exists()  # the directories it made are gone
    assert "-install vfio-pci /usr/local/sbin/exliar-vfio-pci-override $CMDLINE_OPTS" in run.stdout


def test_a_second_restore_changes_nothing(bind_lab):
    run = bind_lab["runs"]["restore2"]
    assert run.returncode == 0, run.tail()
    assert counts(bind_lab, "restore2", "restore")["changed"] == 0
    assert differences(bind_lab["snaps"]["restored"], bind_lab["snaps"]["restored2"]) == []


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("host, needles", [
    ("unknown", ["0000:0e:00.0 is not a PCI device on this host", "vfio_allow_missing_devices: true"]),
    ("bad-id", ["'1002:73a' is not a vendor:device id", "10de:1e87"]),
    ("bridge", ["0000:07:00.0 is a PCI bridge", "select the devices behind it"]),
    ("conflict", ["entries 1 and 2 conflict: 0000:08:00.0 is both selected and excluded"]),
    ("conflict-companion", ["0000:08:00.1 is excluded but it is companion of 0000:08:00.0"]),
    ("two-selectors", ["entry 1: give exactly one of address, id, name, gpus, found address, id"]),
])
def test_bad_input_fails_the_host_and_changes_nothing(bind_lab, host, needles):
    assert_refused(bind_lab, host, *needles)
    assert_untouched(bind_lab, host)


def test_a_missing_address_is_skipped_with_vfio_allow_missing_devices(bind_lab):
    assert_bound(bind_lab, "unknown-skipped")
    conf = read(bind_lab, "unknown-skipped", MODPROBE)
    assert "0000:08:00.0" in conf and "0000:0e:00.0" not in conf
    out = bind_lab["runs"]["apply"].stdout + bind_lab["runs"]["apply"].stderr
    assert "0000:0e:00.0 is not a PCI device on this host (see `lspci -D`) (allowed by vfio_allow_missing_devices: true)" in out


def test_an_unwritable_modprobe_d_is_a_clear_error(bind_lab):
    msg = assert_refused(bind_lab, "modprobe-d-file", "cannot write", "/etc/modprobe.d/exliar-vfio.conf", "is not a directory")
    assert "Nothing was changed" in msg
    before = {k: v for k, v in bind_lab["snaps"]["before"]["modprobe-d-file"].items() if not k.startswith(STATE)}
    after = {k: v for k, v in bind_lab["snaps"]["applied"]["modprobe-d-file"].items() if not k.startswith(STATE)}
    assert differences(before, after) == []
    assert not (bind_lab["roots"]["modprobe-d-file"] / JOURNAL).exists()  # nothing was journaled


def test_an_unwritable_modprobe_d_leaves_nothing_at_all(bind_lab):
    assert_untouched(bind_lab, "modprobe-d-file")


def test_an_unwritable_script_directory_is_a_clear_error(bind_lab):
    assert_refused(bind_lab, "sbin-file", "cannot write", "/usr/local/sbin/exliar-vfio-pci-override", "is not a directory",
                   "Nothing was changed")


def test_an_unwritable_script_directory_leaves_no_half_configuration(bind_lab):
    root = bind_lab["roots"]["sbin-file"]
    assert not (root / MODPROBE).exists(), (root / MODPROBE).read_text()
    before = {k: v for k, v in bind_lab["snaps"]["before"]["sbin-file"].items() if not k.startswith(STATE)}
    after = {k: v for k, v in bind_lab["snaps"]["applied"]["sbin-file"].items() if not k.startswith(STATE)}
    assert differences(before, after) == []


# ---- the drift guard -------------------------------------------------------------------------------

def test_another_card_at_a_bound_address_is_refused(bind_lab):
    assert_bound(bind_lab, "drift")
    assert bind_lab["drift_record"] is not None, "the first run wrote no plan record"
    recorded = {d["address"]: d for d in bind_lab["drift_record"]["devices"]}
    assert f"{recorded[DRIFT_ADDR]['vendor_id']}:{recorded[DRIFT_ADDR]['device_id']}" == DRIFT_OLD
    facts = bind_lab["runs"]["again"].facts("drift")
    assert_refused(bind_lab, "drift", f"{DRIFT_ADDR} was {DRIFT_OLD} (class 030000) when an earlier run bound it",
                   f"is now {DRIFT_NEW} {label(facts, DRIFT_ADDR)}", "the hardware changed",
                   "vfio_accept_hardware_change: true", run="again")
    assert differences(bind_lab["snaps"]["drifted"], bind_lab["snaps"]["again"]["drift"]) == []


def test_with_vfio_accept_hardware_change_it_binds_the_new_card(bind_lab):
    run = bind_lab["runs"]["accept"]
    assert run.returncode == 0, run.tail()
    assert_bound(bind_lab, "drift", run="accept")
    record = json.loads(read(bind_lab, "drift", RECORD))
    gpu = next(d for d in record["devices"] if d["address"] == DRIFT_ADDR)
    assert f"{gpu['vendor_id']}:{gpu['device_id']}" == DRIFT_NEW
    assert "options vfio-pci ids=1002:73bf,1002:ab30" in directives(read(bind_lab, "drift", MODPROBE))
    assert "(allowed by vfio_accept_hardware_change: true)" in run.stdout + run.stderr


# ---- what modprobe makes of the result ------------------------------------------------------------

@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory):
    """A module tree holding just vfio-pci.ko with depmod's index, for `modprobe --dry-run` against a sysroot's config."""
    if not (shutil.which("modprobe") and shutil.which("depmod")):
        pytest.skip("kmod (modprobe, depmod) not installed")
    base = tmp_path_factory.mktemp("kmod")
    kver = "6.1.0-exliar-test"
    ko = base / "lib/modules" / kver / "kernel/drivers/vfio/pci/vfio-pci.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELF")
    subprocess.run(["depmod", "-b", str(base), kver], capture_output=True, check=False)
    if not (base / "lib/modules" / kver / "modules.dep.bin").exists():
        pytest.skip("depmod could not index the test module tree")
    return base, kver


def modprobe_dry_run(modules_dir, root: Path) -> str:
    base, kver = modules_dir
    proc = subprocess.run(["modprobe", "--dry-run", "--verbose", "-d", str(base), "-S", kver, "-C", str(root / "etc/modprobe.d"),
                           "vfio-pci"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_modprobe_runs_the_override_script_for_vfio_pci(bind_lab, modules_dir):
    for host in ("gtx480-second", "gt710-second"):
        assert modprobe_dry_run(modules_dir, bind_lab["roots"][host]).startswith(
            "install /usr/local/sbin/exliar-vfio-pci-override"), host


@pytest.mark.parametrize("host, ids", [
    ("split-b550", "1002:73a5,1002:ab28"),
    # single-gpu-desktop's own vfio.conf bound an FPGA (10ee:5000,10ee:5001): taken over, its ids carried into ours
    ("boot-allowed", "10de:228b,10de:2489,10ee:5000,10ee:5001"),
])
def test_modprobe_passes_the_selected_ids_to_vfio_pci(bind_lab, modules_dir, host, ids):
    line = modprobe_dry_run(modules_dir, bind_lab["roots"][host])
    assert line.startswith("insmod ") and "vfio-pci.ko" in line, line
    given = re.findall(r"\bids=(\S+)", line)
    assert given and given[-1] == ids, line  # the kernel keeps the last ids= it is given
