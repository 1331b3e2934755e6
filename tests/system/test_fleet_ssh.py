"""A fleet over real SSH: hosts are network namespaces, each with its own sshd and lab sysroot.

Three namespaces run ``/usr/sbin/sshd`` (generated host key, config and authorized key) on a
link-local address of a veth pair, and each is pointed at a different lab sysroot through
``vfio_root`` (the sysroots are on this machine's file system, so the sshd of a namespace reads
them directly). A fourth namespace has an address but no sshd: the unreachable host. One run of
playbooks/vfio.yml with forks covers all of them. All traffic stays on this machine: the
addresses are 169.254.x.y/30 on veth pairs whose far ends live in namespaces the test creates,
and everything is removed by the fixture's finalizer, also on failure.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _support import FailureWatch, close_ssh_masters, record_timing
from build_sysroot import DEFAULT_OUT, build, load_profile, profile_paths
from labrun import assert_matches_expect, cached_facts, recap, run_playbook
from vm import die_with_parent

pytestmark = pytest.mark.system

REACHABLE = 3
SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=60, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(str(c) for c in cmd)}: rc {proc.returncode}: {proc.stderr.strip()}")
    return proc


def pick_profiles(n: int) -> list:
    """n lab profiles, preferring different (bootloader, initramfs) pairs and a mix of IOMMU states."""
    profiles = []
    for path in profile_paths():
        profile = load_profile(path)
        profile["_path"] = path
        profiles.append(profile)
    if len(profiles) < n:
        pytest.skip(f"the lab has {len(profiles)} profiles, the fleet needs {n}")
    chosen, flavours = [], set()
    for p in profiles:
        flavour = (p["os"].get("bootloader"), p["os"].get("initramfs"))
        if flavour not in flavours:
            chosen.append(p)
            flavours.add(flavour)
        if len(chosen) == n:
            break
    for p in profiles:
        if len(chosen) == n:
            break
        if p not in chosen:
            chosen.append(p)
    return chosen


def free_linklocal_block() -> int:
    """A third octet x such that no address of this machine is in 169.254.x.0/24 (never .169)."""
    used = set(re.findall(r"inet 169\.254\.(\d+)\.", sh("ip", "-o", "-4", "addr", "show").stdout))
    routes = set(re.findall(r"169\.254\.(\d+)\.", sh("ip", "-4", "route", "show", "table", "all").stdout))
    base = 200 + os.getpid() % 40
    for x in list(range(base, 250)) + list(range(200, base)):
        if str(x) not in used | routes:
            return x
    raise RuntimeError("no free 169.254.x.0/24 block for the fleet")


class Fleet:
    """Network namespaces with sshd; everything it made is undone by close()."""

    made = 0

    def __init__(self, tmp: Path):
        self.tmp = tmp
        Fleet.made += 1
        self.tag = f"{os.getpid() % 100000}{chr(ord('a') + Fleet.made - 1)}"  # unique per fleet, short for veths
        self.octet = free_linklocal_block()
        self.namespaces: list = []
        self.links: list = []
        self.sshd: dict = {}      # host -> Popen
        self.hosts: dict = {}     # host -> {"ns", "address", ...}
        self.made_privsep = False
        self.control_dirs: list = []  # extra SSH ControlPath directories to close
        self.client_key = tmp / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vfio-fleet-client", "-f", self.client_key)

    def add_namespace(self, host: str, index: int) -> dict:
        ns = f"vfio-fleet-{self.tag}-{index}"
        host_if, ns_if = f"vf{self.tag}h{index}", f"vf{self.tag}n{index}"
        host_ip = f"169.254.{self.octet}.{4 * index + 1}"
        ns_ip = f"169.254.{self.octet}.{4 * index + 2}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        self.links.append(host_if)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        self.hosts[host] = {"ns": ns, "address": ns_ip}
        return self.hosts[host]

    def start_sshd(self, host: str) -> None:
        info = self.hosts[host]
        d = self.tmp / host
        d.mkdir()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key")
        (d / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        (d / "sshd_config").write_text(
            f"ListenAddress {info['address']}:22\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "UseDNS no\nSubsystem sftp internal-sftp\nMaxStartups 50\n")
        privsep = Path("/run/sshd")
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            self.made_privsep = True
        log = open(d / "sshd.log", "w")
        self.sshd[host] = subprocess.Popen(
            ["ip", "netns", "exec", info["ns"], "/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.sshd[host].poll() is not None:
                raise RuntimeError(f"sshd for {host} exited: {(d / 'sshd.log').read_text()}")
            try:
                with socket.create_connection((info["address"], 22), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"sshd for {host} is not listening on {info['address']}:22")

    def close(self) -> None:
        for control in [self.tmp / "cp", *self.control_dirs]:
            close_ssh_masters(control)
        # the sshd listeners and their per-connection children (which setsid(), so they are not in
        # the listener's process group): every process in our namespaces is ours
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.monotonic() + 5
            while True:
                pids = [int(p) for ns in self.namespaces
                        for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
                if not pids or time.monotonic() > deadline:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
            if not pids:
                break
        for proc in self.sshd.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=10)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        if self.made_privsep:
            try:
                Path("/run/sshd").rmdir()
            except OSError:
                pass


@pytest.fixture(scope="module")
def fleet(request, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the fleet needs root (ip netns, sshd)")
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("/usr/sbin/sshd missing: run tests/system/setup.sh")
    tmp = tmp_path_factory.mktemp("fleet")
    watch = FailureWatch(request)
    t0 = time.monotonic()
    profiles = pick_profiles(REACHABLE)
    sysroots = {p["id"]: build(p["_path"], DEFAULT_OUT) for p in profiles}
    fleet = Fleet(tmp)
    request.addfinalizer(fleet.close)     # registered before anything exists: always cleaned up
    for i, p in enumerate(profiles):
        fleet.add_namespace(p["id"], i)
        fleet.start_sshd(p["id"])
    dead = "unreachable-host"
    fleet.add_namespace(dead, REACHABLE)   # an address, no sshd: connection refused
    hosts = {}
    for p in profiles:
        hosts[p["id"]] = {"ansible_host": fleet.hosts[p["id"]]["address"], "vfio_root": str(sysroots[p["id"]])}
    hosts[dead] = {"ansible_host": fleet.hosts[dead]["address"], "vfio_root": "/"}
    inventory = {"all": {"vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(fleet.client_key),
                                  "ansible_ssh_common_args": SSH_COMMON_ARGS, "ansible_timeout": 10,
                                  # the hosts are this machine: use its Debian Python, not whatever
                                  # interpreter discovery finds first on root's PATH (a pyenv shim here)
                                  "ansible_python_interpreter": "/usr/bin/python3"},
                         "hosts": hosts}}
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
    t_play = time.monotonic()
    proc = run_playbook(tmp, "playbooks/vfio.yml", "--forks", str(REACHABLE + 1), inventory=inv,
                        ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp / "cp"))
    t_done = time.monotonic()
    record_timing("fleet: namespaces + sshd + sysroots", t_play - t0)
    record_timing("fleet: ansible-playbook (4 hosts, forks 4)", t_done - t_play)
    yield {"proc": proc, "tmp": tmp, "profiles": {p["id"]: p for p in profiles}, "sysroots": sysroots,
           "dead": dead, "fleet": fleet, "recap": recap(proc.stdout)}
    if watch.failed:
        out = Path(__file__).resolve().parents[1] / "output" / "system" / "fleet"
        out.mkdir(parents=True, exist_ok=True)
        (out / "ansible-playbook.out").write_text(proc.stdout + proc.stderr)
        for host in fleet.sshd:
            log = tmp / host / "sshd.log"
            if log.exists():
                (out / f"sshd-{host}.log").write_text(log.read_text())


def test_recap_unreachable_host_and_no_changes(fleet):
    proc, rc = fleet["proc"], fleet["recap"]
    assert proc.returncode == 4, proc.stdout[-4000:] + proc.stderr[-2000:]  # 4: some host unreachable
    assert sorted(rc) == sorted([*fleet["profiles"], fleet["dead"]])
    assert rc[fleet["dead"]]["unreachable"] == 1 and rc[fleet["dead"]]["failed"] == 0
    for host in fleet["profiles"]:
        assert rc[host]["ok"] >= 1 and rc[host]["changed"] == 0, (host, rc[host])
        assert rc[host]["failed"] == 0 and rc[host]["unreachable"] == 0, (host, rc[host])


def test_each_host_read_its_own_sysroot_over_ssh(fleet):
    for host, profile in fleet["profiles"].items():
        facts = cached_facts(fleet["tmp"], host)["vfio"]
        assert facts["root"] == str(fleet["sysroots"][host])
        assert facts["system"]["kernel"]["running"] == profile["os"]["kernel"]
        assert facts["warnings"] == [], (host, facts["warnings"])


@pytest.mark.parametrize("index", range(REACHABLE))
def test_facts_match_each_profile(fleet, index):
    host = sorted(fleet["profiles"])[index]
    expect = fleet["profiles"][host]["expect"]
    facts = cached_facts(fleet["tmp"], host)["vfio"]
    assert_matches_expect(facts, expect, host)


def test_hosts_got_different_sysroots(fleet):
    signatures = set()
    for host in fleet["profiles"]:
        facts = cached_facts(fleet["tmp"], host)["vfio"]
        signatures.add((facts["system"]["kernel"]["running"], tuple(g["address"] for g in facts["gpus"]),
                        facts["bootloader"]["name"]))
    assert len(signatures) == REACHABLE


def test_unreachable_host_has_no_facts(fleet):
    assert not (fleet["tmp"] / "facts" / fleet["dead"]).exists()


def test_summary_lists_every_host_and_marks_the_unreachable_one(fleet):
    out = fleet["proc"].stdout
    assert "VFIO SUMMARY" in out, out[-3000:]
    summary = out[out.index("VFIO SUMMARY"):]
    blocks = {}
    for block in summary.split("\n\n"):
        lines = block.strip("\n").splitlines()
        lines = [line for line in lines if not line.startswith("VFIO SUMMARY")]
        if lines:
            blocks[lines[0].strip()] = "\n".join(lines)
    for host in fleet["profiles"]:
        assert host in blocks, (host, summary)
        assert "FAILED" not in blocks[host]
        facts = cached_facts(fleet["tmp"], host)["vfio"]
        for gpu in facts["gpus"]:
            assert gpu["address"] in blocks[host]
    dead = blocks.get(fleet["dead"], "")
    assert re.search(r"FAILED\s+unreachable:", dead), summary


def test_cleanup_leaves_nothing_behind(tmp_path):
    """What the fixture's finalizer relies on: after a failure mid-test, close() removes the
    namespaces, the veth pairs, sshd with its session processes and the SSH ControlPersist masters."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    fleet = Fleet(tmp_path)
    with pytest.raises(RuntimeError, match="simulated"):
        try:
            info = fleet.add_namespace("probe", 0)
            fleet.start_sshd("probe")
            control = Path(tempfile.mkdtemp(prefix="vf-cp-"))  # short: unix socket paths are limited
            fleet.control_dirs.append(control)
            sh("ssh", "-i", fleet.client_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
               "-o", f"ControlPath={control}/%C", f"root@{info['address']}", "true")
            assert list(control.iterdir()), "a ControlPersist master is running"
            assert sh("ip", "netns", "pids", info["ns"]).stdout.split(), "sshd runs in the namespace"
            raise RuntimeError("simulated test failure")
        finally:
            fleet.close()
    assert info["ns"] not in sh("ip", "netns", "list").stdout
    assert fleet.links[0] not in sh("ip", "-o", "link", "show").stdout
    leftovers = sh("ps", "-eo", "pid,args").stdout
    assert str(tmp_path) not in leftovers and str(fleet.control_dirs[0]) not in leftovers, leftovers
    shutil.rmtree(fleet.control_dirs[0], ignore_errors=True)
    assert all(proc.poll() is not None for proc in fleet.sshd.values())
