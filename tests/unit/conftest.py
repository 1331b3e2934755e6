"""Fixtures for the unit tests (the collection loader and lab/ on sys.path come from tests/conftest.py)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def sysroot_base(tmp_path_factory):
    """Directory the sysroots are built in.

    A sysroot is a few hundred small files; on a busy disk building one takes ten times longer
    than in memory, so use /dev/shm when there is one (removed at the end of the session).
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="exliar-vfio-unit-", dir=shm))
        yield base
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("sysroots")


@pytest.fixture
def make_sysroot(sysroot_base):
    """``make_sysroot(profile_dict=None, **sections)`` -> path of a freshly built sysroot.

    Without a profile the base desktop of :mod:`helpers` is used, with ``sections`` applied
    (see :func:`helpers.profile`). Every call builds into its own directory, so a test may
    mutate what it gets.
    """
    made = []

    def make(profile_dict=None, **sections):
        p = profile_dict if profile_dict is not None else helpers.profile(**sections)
        out = Path(tempfile.mkdtemp(dir=sysroot_base)) / "root"
        made.append(out.parent)
        return helpers.build(p, out)

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def desktop_root(sysroot_base):
    """The base desktop, built once with a pci.ids database. READ ONLY: do not mutate."""
    root = helpers.build(helpers.profile(), sysroot_base / "desktop")
    helpers.write(root, "usr/share/misc/pci.ids", helpers.PCI_IDS)
    return root


@pytest.fixture(scope="session")
def desktop_facts(desktop_root):
    """gather_facts() of :func:`desktop_root` (shared: do not mutate)."""
    from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

    return gather_facts(str(desktop_root))


@pytest.fixture
def host_vars(tmp_path, monkeypatch):  # the built-in plugins' tests (tests/unit/builtin_plugins)
    """``host_vars(builtins, config=None, **more)``: a host's variables with private config, cache and run directories."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EXLIAR_VFIO_RUN_DIR", str(tmp_path / "run"))

    def make(builtins, config=None, **more):
        out = {"inventory_hostname": "h1", "vfio_plugin_default_dirs": False,
               "vfio_plugin_approvals_file": str(tmp_path / "approvals.json"), "vfio_builtin_plugins": list(builtins)}
        if config:
            out["vfio_plugins"] = {name: {"config": section} for name, section in config.items()}
        out.update(more)
        return out

    return make
