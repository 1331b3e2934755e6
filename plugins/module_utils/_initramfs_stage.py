# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The initramfs stage on the target: configure the generator in use, regenerate every
installed kernel's image when that changed, verify inside each image, and roll back a failure.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as config
from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_image as image
from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError, atomic_write

STAGE = "initramfs"
IMAGE_BACKUPS = "/var/lib/exliar-vfio/images"
# What this run's configuration replaced, kept until the images are rebuilt and verified.
PREVIOUS = "/var/lib/exliar-vfio/state/initramfs-previous.json"


class StageError(Exception):
    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _read(root: str, path: str):
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def current_files(root: str, generator) -> dict:
    """The text of every file (and glob) the generator's planning reads; ``dir/`` marks a directory that exists."""
    out = {}
    for pattern in config.inputs(generator):
        if pattern.endswith("/"):
            if os.path.isdir(os.path.join(root, pattern.strip("/"))):
                out[pattern] = ""
        elif any(c in pattern for c in "*?["):
            for real in sorted(glob.glob(os.path.join(root, pattern.lstrip("/")))):
                path = "/" + os.path.relpath(real, root)
                out[path] = _read(root, path)
        else:
            out[pattern] = _read(root, pattern)
    return out


def configure(root: str, generator, handoff: dict, check_mode: bool) -> dict:
    """Write the generator's configuration through the journal, keeping what it replaced until the
    images are rebuilt (a failed regeneration puts it back)."""
    try:
        plan = config.plan_initramfs(generator, handoff or {}, current_files(root, generator))
    except ValueError as exc:
        raise StageError(f"{exc}; nothing was changed", {"changed": False, "files": []}) from exc
    result = {"changed": False, "files": [], "plan": plan, "warnings": list(plan.get("warnings") or [])}
    if plan.get("errors"):
        raise StageError("; ".join(plan["errors"]), result)
    journal = Journal(root)
    files = plan.get("files") or {}
    if not check_mode:
        journal.preflight([p for p, spec in files.items() if spec is not None])
    previous = {}
    for path, spec in sorted(files.items()):
        before = _read(root, path)
        if spec is None:
            res = journal.remove_file(STAGE, path, check_mode=check_mode)
        else:
            res = journal.write_file(STAGE, path, spec["content"].encode(), mode=spec.get("mode"), check_mode=check_mode)
        if res["changed"]:
            previous[path] = before
        result["files"].append(res)
    result["changed"] = any(f["changed"] for f in result["files"])
    if previous and not check_mode:
        _save_previous(root, previous)
    return result


def _save_previous(root: str, previous: dict) -> None:
    path = os.path.join(root, PREVIOUS.lstrip("/"))
    old = {}
    if os.path.exists(path):  # an earlier run's regeneration never happened: keep the oldest content
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    old.update({k: v for k, v in previous.items() if k not in old})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, json.dumps(old, sort_keys=True).encode(), mode=0o600)


def _take_previous(root: str) -> dict:
    path = os.path.join(root, PREVIOUS.lstrip("/"))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _forget_previous(root: str) -> None:
    try:
        os.unlink(os.path.join(root, PREVIOUS.lstrip("/")))
    except OSError:
        pass


def runnable(root: str, argv0: str) -> bool:
    """The generator can run in ``root``: it is the running system, or a chroot with a shell and the tool."""
    if os.path.abspath(root) == "/":
        return shutil.which(argv0) is not None or os.path.isabs(argv0) and os.access(argv0, os.X_OK)
    has_shell = os.access(os.path.join(root, "bin/sh"), os.X_OK)
    tool = argv0 if os.path.isabs(argv0) else next(
        (f"/{d}/{argv0}" for d in ("usr/sbin", "usr/bin", "sbin", "bin", "usr/lib/booster")
         if os.access(os.path.join(root, d, argv0), os.X_OK)), None)
    return has_shell and tool is not None


def _in_root(root: str, argv: list) -> list:
    return list(argv) if os.path.abspath(root) == "/" else ["chroot", root] + list(argv)


def _backup_images(root: str, paths: dict) -> dict:
    saved = {}
    for kernel, path in paths.items():
        real = os.path.join(root, path.lstrip("/"))
        if os.path.isfile(real):
            dest = os.path.join(root, IMAGE_BACKUPS.lstrip("/"), os.path.basename(path))
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            shutil.copy2(real, dest)
            saved[kernel] = (real, dest)
    return saved


def _restore_images(saved: dict) -> None:
    """Put the saved images back; one that cannot be written (a read-only /boot) was not changed either."""
    for real, dest in saved.values():
        try:
            with open(real, "rb") as now, open(dest, "rb") as before:
                if now.read() == before.read():
                    continue
            shutil.copy2(dest, real)
        except OSError:
            pass


def _drop_backups(saved: dict) -> None:
    for _real, dest in saved.values():
        try:
            os.unlink(dest)
        except OSError:
            pass


def run_binary(argv: list) -> tuple:
    """(rc, stdout bytes, stderr text) of a decompressor; 127 when it is not installed."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except OSError as exc:
        return 127, b"", str(exc)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", errors="replace")


def verify(root: str, generator, kernels: list, family, handoff: dict, run_command) -> dict:
    """Per kernel: the image, what it lacks of the vfio modules and the handed-over files."""
    paths = config.image_paths(generator, kernels, family)
    modules = (handoff or {}).get("modules") or {}
    extra = [p.lstrip("/") for p in (handoff or {}).get("files") or []]
    by_address = any(p.endswith("exliar-vfio-pci-override") for p in extra)
    if generator == "booster":  # booster compiles modprobe options into its own config: no such files in the image,
        extra = []  # and with devices bound by address vfio_pci stays out (its install line must run after switch-root)
        if by_address:
            modules = {k: [m for m in v if m.replace("-", "_") != "vfio_pci"] for k, v in modules.items()}
    out = {}
    for kernel in kernels:
        path = paths.get(kernel)
        entry = {"image": path, "ok": False, "missing": []}
        out[kernel] = entry
        if not path or not os.path.isfile(os.path.join(root, path.lstrip("/"))):
            entry["missing"] = [f"the image {path or '(unknown path)'}"]
            continue
        try:
            listing = image.list_image(os.path.join(root, path.lstrip("/")), lambda argv: run_command(argv, binary=True))
        except image.ImageError as exc:
            entry["missing"] = [f"a readable image: {exc}"]
            continue
        check = image.check_vfio(listing, kernel, modules.get(kernel, []), extra)
        entry.update(ok=check["ok"], missing=check["missing"])
    return out


def regenerate(root: str, generator, kernels: list, family, handoff: dict, check_mode: bool, run_command) -> dict:
    """Rebuild every kernel's image with the generator's own command, then verify each. A failure
    puts the previous configuration (this run's journal records) and images back and says why."""
    commands = config.regenerate_commands(generator, kernels, os.path.abspath(root) == "/", family)
    result = {"changed": False, "commands": [" ".join(c) for c in commands], "kernels": {}, "regenerated": False}
    if not commands:
        result["not_rebuilt"] = f"no regeneration command for {generator}"
        return result
    if not runnable(root, commands[0][0]):
        result["not_rebuilt"] = f"{commands[0][0]} cannot run in {root} (not the running system, nor a chroot with it installed)"
        return result
    if check_mode:
        result["changed"] = True
        return result
    saved = _backup_images(root, config.image_paths(generator, kernels, family))
    failure = None
    for argv in commands:
        rc, out, err = run_command(_in_root(root, argv))
        if rc != 0:
            failure = f"`{' '.join(argv)}` failed (rc {rc}): {(err or out).strip()[-2000:]}"
            break
    if failure is None:
        result["kernels"] = verify(root, generator, kernels, family, handoff, run_command)
        bad = {k: v["missing"] for k, v in result["kernels"].items() if not v["ok"]}
        if bad:
            failure = "the rebuilt images lack what vfio-pci needs: " + "; ".join(f"{k}: {', '.join(m)}" for k, m in sorted(bad.items()))
    if failure is not None:
        _rollback(root, saved)
        result["changed"] = True
        raise StageError(f"{failure}. The previous configuration and images were put back", result)
    _drop_backups(saved)
    _forget_previous(root)
    result.update(changed=True, regenerated=True)
    return result


def _rollback(root: str, saved: dict) -> None:
    """The configuration as it was before this run's changes (journaled again), and the old images."""
    journal = Journal(root)
    for path, content in sorted(_take_previous(root).items()):
        try:
            if content is None:
                journal.remove_file(STAGE, path)
            else:
                journal.write_file(STAGE, path, content.encode("utf-8", errors="surrogateescape"))
        except JournalError:
            pass
    _forget_previous(root)
    _restore_images(saved)
    _drop_backups(saved)


def host_context(root: str, generator=None, kernels=None) -> dict:
    """The generator, kernels and distribution family of ``root``, as detection sees them."""
    from ansible_collections.exliar.vfio.plugins.module_utils import _system as system  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._initramfs_detect import detect_initramfs  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS  # pylint: disable=import-outside-toplevel
    fs = RootFS(root)
    return {
        "generator": generator or detect_initramfs(fs).get("name"),
        "kernels": list(kernels) if kernels else system.installed_kernels(fs),
        "family": system.distribution(fs).get("family"),
    }


def restore(root: str, check_mode: bool, run_command, generator=None, kernels=None) -> dict:
    """Undo the stage: its files back byte-identical, then the images rebuilt without them."""
    journal = Journal(root)
    records = journal.active(STAGE)
    files = journal.restore_files(STAGE, check_mode=check_mode)
    out = {"changed": any(f["changed"] for f in files), "files": files, "devices": [], "runtime": None}
    if out["changed"]:
        ctx = host_context(root, generator, kernels)
        commands = config.regenerate_commands(ctx["generator"], ctx["kernels"], os.path.abspath(root) == "/", ctx["family"])
        if commands and runnable(root, commands[0][0]) and not check_mode:
            for argv in commands:
                rc, stdout, err = run_command(_in_root(root, argv))
                if rc != 0:
                    raise JournalError(f"the configuration was restored but `{' '.join(argv)}` failed (rc {rc}): "
                                       f"{(err or stdout).strip()[-1000:]}; run it by hand")
            out["regenerated"] = [" ".join(c) for c in commands]
    if records and not check_mode:
        journal.mark_restored(STAGE)
        _forget_previous(root)
    return out
