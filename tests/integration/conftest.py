"""Sysroot integration tier: build every lab profile, run the real playbook once over the lab."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from build_sysroot import DEFAULT_OUT, build, load_profile, profile_paths
from labrun import REPO, cached_facts, recap, run_playbook

PROFILES = {p.stem: p for p in profile_paths()}


@pytest.fixture(scope="session")
def sysroots() -> dict:
    return {pid: build(path, DEFAULT_OUT) for pid, path in PROFILES.items()}


@pytest.fixture(scope="session")
def lab_run(sysroots, tmp_path_factory):
    """One run of playbooks/vfio.yml over the whole lab, as ./dev.sh demo does."""
    tmp = tmp_path_factory.mktemp("lab")
    proc = run_playbook(tmp, "playbooks/vfio.yml")
    return {"proc": proc, "tmp": tmp, "recap": recap(proc.stdout)}


@pytest.fixture(scope="session")
def lab_facts(lab_run) -> dict:
    return {pid: cached_facts(lab_run["tmp"], pid)["vfio"] for pid in PROFILES}


@pytest.fixture(scope="session")
def profiles() -> dict:
    return {pid: load_profile(path) for pid, path in PROFILES.items()}


def lab_inventory_hosts() -> list:
    inv = yaml.safe_load((REPO / "lab" / "inventory.yml").read_text())
    return sorted(inv["all"]["children"]["lab"]["hosts"])


__all__ = ["PROFILES", "Path", "lab_inventory_hosts"]
