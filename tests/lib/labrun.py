"""Run ansible-playbook against lab sysroots the way a user does, and read the facts back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def ansible_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
        "ANSIBLE_CACHE_PLUGIN": "jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp / "facts"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


def run_playbook(tmp: Path, *args: str, inventory: Path | None = None, timeout: float = 900, **env) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "ansible-playbook")]
    if inventory is not None:
        cmd += ["-i", str(inventory)]
    cmd += list(args)
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(tmp, **env), capture_output=True, text=True, timeout=timeout, check=False)


def cached_facts(tmp: Path, host: str) -> dict:
    """A host's facts from the jsonfile cache (ansible-core 2.19 names the file ``s1_<host>``)."""
    for name in (host, f"s1_{host}"):
        path = tmp / "facts" / name
        if path.exists():
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("__payload__"), str):  # 2.19 envelope
                data = json.loads(data["__payload__"])
            return data
    raise FileNotFoundError(f"no cached facts for {host} in {tmp / 'facts'}")


def recap(stdout: str) -> dict:
    """PLAY RECAP lines -> {host: {"ok": n, "changed": n, ...}}."""
    out = {}
    in_recap = False
    for line in stdout.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap:
            if not line.strip():
                break
            host, _sep, rest = line.partition(":")
            out[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in rest.split())}
    return out


def assert_matches_expect(facts: dict, expect: dict, label: str) -> None:
    """The facts of one host agree with its profile's ``expect`` block (written from the source)."""
    assert facts["iommu"]["enabled"] is expect["iommu_enabled"], label
    assert facts["bootloader"]["name"] == expect["bootloader"], (label, facts["bootloader"])
    assert facts["initramfs"]["name"] == expect["initramfs"], (label, facts["initramfs"])
    assert facts["system"]["machine"]["laptop"] is expect["laptop"], label
    gpus = {g["address"]: g for g in facts["gpus"]}
    assert sorted(gpus) == sorted(expect["gpus"]), label
    for addr, want in expect["gpus"].items():
        for key, value in want.items():
            assert gpus[addr][key] == value, f"{label} {addr} {key}: got {gpus[addr][key]!r}, the source shows {value!r}"
