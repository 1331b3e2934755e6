# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt through ``virsh`` (a ``run_command`` callable: argv -> (rc, stdout, stderr), like
AnsibleModule.run_command), and the QEMU process of a running domain read from procfs.

Only the running system is driven here: the stage never calls this for a root other than ``/``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

DEFAULT_URI = "qemu:///system"
PID_DIR = "/run/libvirt/qemu"
POLL_SECONDS = 0.5

INSTALL_HINT = ("install libvirt (Debian/Ubuntu: apt install libvirt-daemon-system libvirt-clients qemu-system-x86; "
                "Fedora/RHEL: dnf install libvirt-daemon-kvm libvirt-client; Arch: pacman -S libvirt qemu-base) "
                "and start it (systemctl enable --now libvirtd, or the modular virtqemud.socket)")


class LibvirtError(Exception):
    """virsh failed; the message carries the command and libvirt's own words."""


class Virsh:
    def __init__(self, run_command, uri: str = DEFAULT_URI, executable: str = "virsh"):
        self.run_command = run_command
        self.uri = uri
        self.executable = executable

    def _run(self, *args) -> tuple:
        return self.run_command([self.executable, "--quiet", "--connect", self.uri] + [str(a) for a in args])

    def _ok(self, *args) -> str:
        rc, out, err = self._run(*args)
        if rc != 0:
            raise LibvirtError(f"`virsh --connect {self.uri} {' '.join(str(a) for a in args)}` failed (rc {rc}): "
                               f"{(err or out).strip()[-1000:]}")
        return out

    # ----------------------------------------------------------------- the daemon

    def unavailable(self):
        """None when virsh is installed and libvirt answers at the URI; else why not, with what to do."""
        if shutil.which(self.executable) is None and not os.access(self.executable, os.X_OK):
            return f"virsh is not installed: {INSTALL_HINT}"
        rc, out, err = self._run("uri")
        if rc != 0:
            return f"libvirt does not answer at {self.uri} ({(err or out).strip()[-300:]}): {INSTALL_HINT}"
        return None

    def capabilities(self) -> str:
        return self._ok("capabilities")

    def kvm_available(self, arch: str = "x86_64") -> bool:
        """The capabilities offer a ``kvm`` domain for ``arch`` guests (/dev/kvm usable by libvirt's QEMU)."""
        try:
            root = ET.fromstring(self.capabilities())
        except ET.ParseError:
            return False
        for guest in root.findall("guest"):
            arch_el = guest.find("arch")
            if arch_el is not None and arch_el.get("name") == arch:
                if any(d.get("type") == "kvm" for d in arch_el.findall("domain")):
                    return True
        return False

    # ----------------------------------------------------------------- domains

    def exists(self, name: str) -> bool:
        rc, _out, _err = self._run("dominfo", name)
        return rc == 0

    def state(self, name: str):
        """``(state, reason)`` such as ``("shut off", "shutdown")`` or ``("running", "booted")``; None when not defined."""
        rc, out, _err = self._run("domstate", "--reason", name)
        if rc != 0:
            return None
        text = out.strip()
        if text.endswith(")") and " (" in text:
            state, reason = text[:-1].split(" (", 1)
            return state.strip(), reason.strip()
        return text, ""

    def inactive_xml(self, name: str):
        """The persistent definition (``dumpxml --inactive``), or None when there is no such domain."""
        rc, out, _err = self._run("dumpxml", "--inactive", name)
        return out if rc == 0 else None

    def define(self, xml_text: str) -> None:
        fd, path = tempfile.mkstemp(prefix="exliar-vfio-", suffix=".xml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(xml_text)
            self._ok("define", path)
        finally:
            os.unlink(path)

    def start(self, name: str) -> None:
        self._ok("start", name)

    def cpu_time_ns(self, name: str):
        """``cpu.time`` of ``domstats --cpu-total`` (ns), or None (not running, or no cgroup accounting)."""
        rc, out, _err = self._run("domstats", "--cpu-total", name)
        if rc != 0:
            return None
        for line in out.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key == "cpu.time" and value.isdigit():
                return int(value)
        return None


# --------------------------------------------------------------------------- the QEMU process


def qemu_pid(name: str, pid_dir: str = PID_DIR):
    try:
        with open(os.path.join(pid_dir, f"{name}.pid"), encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def proc_cpu_seconds(pid: int, proc: str = "/proc"):
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``; None when gone or exiting."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    if not fields or fields[0] in ("Z", "X"):  # exiting: only the main thread's times are left
        return None
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


def proc_memory_mib(pid: int, proc: str = "/proc") -> dict:
    """``{"rss_mib", "hwm_mib"}`` (VmRSS, VmHWM: the peak resident set) of a process; {} when gone."""
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _sep, value = line.partition(":")
        if key in ("VmRSS", "VmHWM") and value.strip().endswith("kB"):
            out["rss_mib" if key == "VmRSS" else "hwm_mib"] = round(int(value.split()[0]) / 1024, 1)
    return out


def gpu_busy(root: str, addresses: list) -> dict:
    """``gpu_busy_percent`` of each host device that exposes it (amdgpu does; vfio-pci does not)."""
    out = {}
    for address in addresses:
        try:
            with open(os.path.join(root, "sys/bus/pci/devices", address, "gpu_busy_percent"), encoding="ascii") as handle:
                out[address] = int(handle.read().strip())
        except (OSError, ValueError):
            continue
    return out


class Monitor:
    """Follows a running domain's QEMU process: CPU time, peak memory, and samples every ``interval``
    seconds when asked. Procfs is read first (no subprocess); ``virsh domstats`` fills in CPU time
    when the process cannot be read. The last reading before the process exits is the total."""

    def __init__(self, virsh: Virsh, name: str, root: str = "/", addresses=(), interval=None,
                 pid_dir: str = PID_DIR, proc: str = "/proc"):
        self.virsh, self.name, self.root = virsh, name, root
        self.addresses = list(addresses)
        self.interval = interval
        self.pid_dir, self.proc = pid_dir, proc
        self.pid = None
        self.cpu_seconds = None
        self.max_memory_mib = None
        self.samples: list = []
        self._last_sample = None

    def poll(self, elapsed: float) -> None:
        if self.pid is None:
            self.pid = qemu_pid(self.name, self.pid_dir)
        cpu = proc_cpu_seconds(self.pid, self.proc) if self.pid else None
        if cpu is None:
            ns = self.virsh.cpu_time_ns(self.name)
            cpu = None if ns is None else ns / 1e9
        memory = proc_memory_mib(self.pid, self.proc) if self.pid else {}
        if cpu is not None:
            self.cpu_seconds = max(cpu, self.cpu_seconds or 0.0)
        peak = memory.get("hwm_mib", memory.get("rss_mib"))
        if peak is not None:
            self.max_memory_mib = max(peak, self.max_memory_mib or 0.0)
        due = self.interval and (self._last_sample is None or elapsed - self._last_sample >= self.interval - 1e-3)
        if due and (cpu is not None or memory):
            self._last_sample = elapsed
            self.samples.append({"t": round(elapsed, 3), "cpu_seconds": None if cpu is None else round(cpu, 3),
                                 "rss_mib": memory.get("rss_mib"), "gpu_busy": gpu_busy(self.root, self.addresses)})

    def gpu(self) -> dict:
        """Per device what could be read once more at the end (usually nothing for a vfio-pci device)."""
        return {a: {"gpu_busy_percent": v} for a, v in gpu_busy(self.root, self.addresses).items()}


def wait_shutoff(virsh: Virsh, name: str, timeout: float, monitor=None, poll: float = POLL_SECONDS,
                 clock=time.monotonic, sleep=time.sleep) -> dict:
    """Poll ``domstate`` until the domain is shut off or ``timeout`` seconds passed.

    Returns ``{"shutdown": "shutdown" | "crashed" | "timeout", "reason", "runtime_seconds"}`` (the reason
    as libvirt gives it: shutdown, destroyed, crashed, failed...). The monitor is polled in between.
    """
    started = clock()
    while True:
        elapsed = clock() - started
        state = virsh.state(name)
        if state is None or state[0] in ("shut off", "crashed"):
            reason = "undefined" if state is None else state[1]
            verdict = "crashed" if state is not None and ("crash" in state[0] or reason in ("crashed", "failed")) else "shutdown"
            return {"shutdown": verdict, "reason": reason, "runtime_seconds": round(elapsed, 3)}
        if monitor is not None:
            monitor.poll(elapsed)
        if elapsed >= timeout:
            return {"shutdown": "timeout", "reason": state[0], "runtime_seconds": round(elapsed, 3)}
        sleep(poll)
