"""playbooks/plugins.yml as a user drives it: list, approve, run a command, send a UI event,
disable and enable, make a key, sign, verify under a signature policy, notice tampering."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from labrun import REPO, VENV_BIN, ansible_env

PLUGINS = REPO / "tests" / "integration" / "plugins"
EXAMPLE = REPO / "examples" / "plugins" / "gpu-inventory"
HOSTS = "desktop-intel-turing,gpu-nvme-shared-group"


@pytest.fixture(name="env")
def fixture_env(sysroots, tmp_path):  # pylint: disable=unused-argument
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    shutil.copytree(EXAMPLE, pdir / "gpu-inventory")
    shutil.copytree(PLUGINS / "recorder", pdir / "recorder", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [pdir, *pdir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o022)
    log = tmp_path / "recorder.jsonl"
    extra = {"vfio_plugin_dirs": [str(pdir)], "vfio_plugin_default_dirs": False,
             "vfio_plugins": {"recorder": {"config": {"log": str(log)}}},
             "vfio_devices": []}  # these tests are about plugin management: detection only
    return {"tmp": tmp_path, "pdir": pdir, "log": log, "extra": extra}


def play(env, playbook: str, **variables) -> subprocess.CompletedProcess:
    extra = dict(env["extra"], **variables)
    process_env = ansible_env(env["tmp"], XDG_CONFIG_HOME=str(env["tmp"] / "config"),
                              XDG_CACHE_HOME=str(env["tmp"] / "cache"))
    cmd = [str(VENV_BIN / "ansible-playbook"), f"playbooks/{playbook}", "-e", f"vfio_hosts={HOSTS}",
           "-e", json.dumps(extra)]
    return subprocess.run(cmd, cwd=REPO, env=process_env, capture_output=True, text=True, timeout=600, check=False)


def listing(env) -> str:
    proc = play(env, "plugins.yml")
    assert proc.returncode == 0, proc.stdout[-2000:]
    return proc.stdout


def test_list_approve_run_event_disable_enable(env):
    text = listing(env)
    assert "gpu-inventory 0.1.0 [directory] NOT LOADED: plugin gpu-inventory 0.1.0 is not approved" in text
    assert "hooks on_load, register_commands, register_ui_elements, on_system_detected, on_gpu_detected" in text
    for name in ("gpu-inventory", "recorder"):
        proc = play(env, "plugins.yml", vfio_plugin_action="approve", vfio_plugin_name=name)
        assert proc.returncode == 0 and "changed=1" in proc.stdout, proc.stdout[-2000:]
    assert "gpu-inventory 0.1.0 [directory] loads; enabled; signature unsigned; API compatible" in listing(env)

    proc = play(env, "plugins.yml", vfio_plugin_action="run", vfio_plugin_command="count-gpus")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.count('"msg": "1 GPU(s)"') == 1 and proc.stdout.count('"msg": "2 GPU(s)"') == 1

    proc = play(env, "plugins.yml", vfio_plugin_action="event", vfio_ui_panel="recorder:calls", vfio_ui_action="refresh")
    assert proc.returncode == 0, proc.stdout[-2000:]
    events = [json.loads(line) for line in env["log"].read_text().splitlines()]
    assert sorted(e["host"] for e in events if e["hook"] == "on_ui_event" and e["detail"] == "refresh") == sorted(HOSTS.split(","))

    proc = play(env, "plugins.yml", vfio_plugin_action="disable", vfio_plugin_name="recorder")
    assert "changed=1" in proc.stdout
    proc = play(env, "plugins.yml", vfio_plugin_action="disable", vfio_plugin_name="recorder")
    assert "changed=0" in proc.stdout and "changed=1" not in proc.stdout
    env["log"].unlink()
    proc = play(env, "vfio.yml")
    assert proc.returncode == 0 and "plugins    gpu-inventory 0.1.0, recorder 1.0.0 (disabled)" in proc.stdout, proc.stdout[-2000:]
    assert not env["log"].exists(), "a disabled plugin must not run"
    proc = play(env, "plugins.yml", vfio_plugin_action="enable", vfio_plugin_name="recorder")
    assert "changed=1" in proc.stdout
    assert play(env, "vfio.yml").returncode == 0 and env["log"].exists()


def test_signatures_keys_and_tampering(env):
    key = env["tmp"] / "keys" / "signing"
    proc = play(env, "plugins.yml", vfio_plugin_action="keygen", vfio_plugin_key=str(key))
    assert proc.returncode == 0 and key.exists() and Path(f"{key}.pub").exists(), proc.stdout[-2000:]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert play(env, "plugins.yml", vfio_plugin_action="approve", vfio_plugin_name="gpu-inventory").returncode == 0
    policy = {"vfio_plugin_require_signatures": True, "vfio_plugin_trusted_keys": [f"{key}.pub"]}

    proc = play(env, "plugins.yml", vfio_plugin_action="verify", vfio_plugin_name="gpu-inventory", **policy)
    assert proc.returncode != 0 and "is unsigned and signatures are required" in proc.stdout

    proc = play(env, "plugins.yml", vfio_plugin_action="sign", vfio_plugin_name="gpu-inventory", vfio_plugin_key=str(key))
    assert proc.returncode == 0, proc.stdout[-2000:]
    # plugin.sig is not part of the plugin's identity: the approval of its files still holds
    proc = play(env, "plugins.yml", vfio_plugin_action="verify", vfio_plugin_name="gpu-inventory", **policy)
    assert proc.returncode == 0 and "signature valid" in proc.stdout, proc.stdout[-2000:]

    plugin_py = env["pdir"] / "gpu-inventory" / "plugin.py"
    plugin_py.chmod(0o644)
    plugin_py.write_text(plugin_py.read_text() + "\n# tampered\n")
    proc = play(env, "plugins.yml", vfio_plugin_action="verify", vfio_plugin_name="gpu-inventory", **policy)
    assert proc.returncode != 0 and "plugin.py" in proc.stdout
    proc = play(env, "vfio.yml", **policy)
    assert proc.returncode == 0 and "plugin gpu-inventory not loaded" in proc.stdout
