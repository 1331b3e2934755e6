# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bootloader stage on the target: edit the command line where the bootloader in use reads
it, run its tool, read back what the next boot will get, and roll back when that is not right.

The parameters this stage added are remembered in ``STATE_FILE`` (itself a file of the stage, so
``restore`` removes it): a parameter no longer wanted on a later run (the ids changed, a device
was deselected) is removed again, while parameters the user had are never touched unless an
entry names them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_config as config
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError

STAGE = "bootloader"
STATE_FILE = "/var/lib/exliar-vfio/state/bootloader.json"


class StageError(Exception):
    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def run_simple(argv: list) -> tuple:
    """(rc, stdout, stderr) of a command; 127 when it is not installed."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def host_context(root: str, name=None) -> dict:
    """What the planning modules need to know about the host below ``root``."""
    from ansible_collections.exliar.vfio.plugins.module_utils import _system as system  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_detect import detect_bootloader  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS  # pylint: disable=import-outside-toplevel
    fs = RootFS(root)
    boot = system.boot(fs)
    detected = detect_bootloader(fs, system.efi_boot_current(fs) if boot.get("mode") == "uefi" else None)
    dist = system.distribution(fs)
    return {
        "bootloader": name or detected.get("name"),
        "evidence": detected.get("evidence") or [],
        "esp": detected.get("esp"),
        "family": dist.get("family"),
        "distribution": dist.get("id"),
        "kernels": system.installed_kernels(fs),
        "tools": config.tools(root),
        "live": os.path.abspath(root) == "/",
        "current_cmdline": fs.read_line("proc/cmdline") or "",
    }


def _resolve_loader(root: str, ctx: dict):
    """The planning module; GRUB reading BLS entries (blscfg) is planned as BLS."""
    name = ctx["bootloader"]
    if not name:
        raise StageError("no known bootloader layout found (GRUB, grubby/BLS, systemd-boot, kernelstub, rEFInd, limine, "
                         "Proxmox): nothing was changed; set vfio_bootloader if you know it, or add the parameters by hand",
                         {"changed": False})
    try:
        module = config.loader(name)
    except ValueError as exc:
        raise StageError(f"{exc}; nothing was changed", {"changed": False}) from exc
    if name == "grub" and "grubby" in config.LOADERS:
        files = config.read_paths(root, module.inputs(ctx))
        if "blscfg" in (files.get(module.real_config(files, ctx)) or ""):
            ctx["bootloader"] = "grubby"
            return config.LOADERS["grubby"]
    return module


def _proxmox_status(root: str, ctx: dict, run) -> None:
    """``proxmox-boot-tool status`` says which loader its ESPs carry (it mounts them to look); only on the
    running system, where it reads this machine's ESPs."""
    if ctx["bootloader"] == "proxmox" and ctx["live"] and runnable(root, "proxmox-boot-tool", ctx["tools"]):
        rc, out, _err = run(["proxmox-boot-tool", "status"])
        if rc == 0:
            ctx["proxmox_boot_status"] = out


def read_state(root: str) -> dict:
    text = config.read_text(root, STATE_FILE)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def with_previous(entries: list, state: dict) -> list:
    """``entries`` plus the removal of parameters an earlier run added that no entry keeps now."""
    wanted = {kp.norm(e["name"]) for e in entries}
    out = list(entries)
    for p in state.get("params") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str) and kp.norm(p["name"]) not in wanted:
            out.append({"name": p["name"], "value": p.get("value"), "state": "absent"})
    return out


def managed(module, before: dict, entries: list, ctx: dict, state: dict) -> list:
    """The present entries this stage puts on the command line: the ones the files lack before this
    run (planning the entry alone writes more than planning no entry, which may already create a file
    such as /etc/kernel/cmdline), plus those an earlier run added. A parameter the user already had is
    not ours: a later run that no longer wants it must leave it alone."""
    earlier = {kp.norm(p["name"]) for p in state.get("params") or [] if isinstance(p, dict) and isinstance(p.get("name"), str)}

    def files_of(todo):
        try:
            return module.plan(before, todo, ctx).get("files") or {}
        except ValueError:
            return None

    baseline = files_of([])
    return [e for e in entries if e["state"] == "present"
            and (kp.norm(e["name"]) in earlier or baseline is None or files_of([e]) != baseline)]


def _state_content(name: str, entries: list, old: dict) -> str:
    """The parameters this stage put on the command line (``managed``: the ones it added, plus
    those it found already there and still manages from an earlier run)."""
    params = [{"name": e["name"], "value": e.get("value")} for e in entries if e["state"] == "present"]
    return json.dumps({"version": 1, "bootloader": name, "params": params}, indent=2, sort_keys=True) + "\n" if params or old else ""


def _in_root(root: str, argv: list) -> list:
    return list(argv) if os.path.abspath(root) == "/" else ["chroot", root] + list(argv)


def runnable(root: str, argv0: str, tools: set) -> bool:
    if os.path.abspath(root) == "/":
        return shutil.which(argv0) is not None or argv0 in tools
    return os.access(os.path.join(root, "bin/sh"), os.X_OK) and argv0 in tools


def _cannot_run(root: str, commands: list, ctx: dict):
    """Why the bootloader's tools cannot run in ``root``, or None."""
    missing = [c[0] for c in commands if not runnable(root, c[0], ctx["tools"])]
    if not missing:
        return None
    where = "this system" if ctx["live"] else f"{root} (not the running system, nor a chroot with it installed)"
    return f"{', '.join(missing)} cannot run in {where}"


def _commands(root: str, commands: list, ctx: dict, run) -> tuple:
    """Run the bootloader's tools: (ran, failure message or None, reason they could not run or None)."""
    if not commands:
        return False, None, None
    cannot = _cannot_run(root, commands, ctx)
    if cannot:
        return False, None, cannot
    for argv in commands:
        rc, out, err = run(_in_root(root, argv))
        if rc != 0:
            return True, f"`{' '.join(argv)}` failed (rc {rc}): {(err or out).strip()[-2000:]}", None
    return True, None, None


def _read_back(root: str, module, ctx: dict) -> dict:
    """The next boot as the files on disk say now (inputs, then the generated outputs)."""
    files = config.read_paths(root, module.inputs(ctx))
    files.update(config.read_paths(root, module.outputs(ctx, files)))
    return module.next_boot(files, ctx)


def _lacking_message(nb: dict, lacking: list) -> str:
    if nb.get("errors"):
        return "; ".join(nb["errors"])
    present = " ".join(kp.word(e) for e in lacking if e["state"] == "present")
    absent = " ".join(kp.word(e) for e in lacking if e["state"] == "absent")
    parts = ([f"lacks {present}"] if present else []) + ([f"still has {absent}"] if absent else [])
    return " and ".join(parts) + ": something else decides it (a custom /etc/grub.d script, another configuration file)"


def configure(root: str = "/", name=None, entries=(), check_mode: bool = False, run_command=None) -> dict:
    """Apply ``entries`` (``vfio_kernel_params`` shape) for the bootloader in use; see the module docstring."""
    run = run_command or run_simple
    try:
        wanted = kp.validate(list(entries or []))
    except kp.ParamError as exc:
        raise StageError(f"{exc}; nothing was changed", {"changed": False}) from exc
    ctx = host_context(root, name)
    module = _resolve_loader(root, ctx)
    _proxmox_status(root, ctx, run)
    state = read_state(root)
    todo = with_previous(wanted, state)
    before = config.read_paths(root, module.inputs(ctx))
    try:
        plan = module.plan(before, todo, ctx)
    except ValueError as exc:
        raise StageError(f"{exc}; nothing was changed", {"changed": False, "bootloader": ctx["bootloader"]}) from exc
    result = {"changed": False, "bootloader": ctx["bootloader"], "evidence": ctx["evidence"], "files": [], "commands": [],
              "regenerated": False, "config_path": plan.get("config_path"), "params": wanted,
              "current_cmdline": ctx["current_cmdline"], "warnings": list(plan.get("warnings") or [])}
    if plan.get("errors"):
        raise StageError("; ".join(plan["errors"]) + "; nothing was changed", result)
    files = dict(plan.get("files") or {})
    state_text = _state_content(ctx["bootloader"], managed(module, before, wanted, ctx, state), state)
    if state_text and state_text != config.read_text(root, STATE_FILE):
        files[STATE_FILE] = {"content": state_text, "mode": 0o644}
    journal = Journal(root)
    if not check_mode and files:
        try:
            journal.preflight([p for p, spec in files.items() if spec is not None])
        except JournalError as exc:
            raise StageError(str(exc), result) from exc
    written = {}
    try:
        for path, spec in sorted(files.items()):
            prior = config.read_text(root, path)
            res = (journal.remove_file(STAGE, path, check_mode=check_mode) if spec is None else
                   journal.write_file(STAGE, path, spec["content"].encode("utf-8", "surrogateescape"), mode=spec.get("mode"),
                                      check_mode=check_mode))
            if res["changed"]:
                written[path] = prior
            result["files"].append(res)
    except (JournalError, OSError) as exc:
        # a file that cannot be written (immutable, a read-only mount the preflight did not see): the files
        # written before it go back, nothing is left half-done
        _rollback(root, written, [], run)
        result["changed"], result["files"] = False, []
        raise StageError(f"{exc}. " + ("The files written before it were put back" if written else "Nothing was changed"),
                         result) from exc
    result["changed"] = any(f["changed"] for f in result["files"])
    commands = plan.get("commands") or []
    result["commands"] = [" ".join(c) for c in commands]
    desired = [e for e in todo if e["state"] == "present"] + [e for e in todo if e["state"] == "absent"]
    if check_mode:  # the same decisions as below, without writing or running anything
        nb = module.next_boot({**before, **config.read_paths(root, module.outputs(ctx, before))}, ctx)
        current = nb.get("cmdline")
        stale = current is None or bool(kp.missing(current, desired))
        cannot = _cannot_run(root, commands, ctx)
        if cannot and (result["changed"] or stale):
            result["not_regenerated"] = cannot
        elif commands and stale:
            result["changed"] = True
        if current is not None and kp.missing(current, desired):
            nb["cmdline"], nb["predicted"] = kp.edit(current, desired), True
        return _finish(result, nb, ctx, desired)
    nb = _read_back(root, module, ctx)
    stale = nb.get("cmdline") is None or bool(kp.missing(nb["cmdline"], desired))
    ran, failure = False, None
    if commands and (result["changed"] or stale):
        ran, failure, cannot = _commands(root, commands, ctx, run)
        if cannot:
            result["not_regenerated"] = cannot
            if nb.get("cmdline") is not None and kp.missing(nb["cmdline"], desired):
                nb["cmdline"], nb["predicted"] = kp.edit(nb["cmdline"], desired), True
            return _finish(result, nb, ctx, desired)
        if failure is None:
            nb = _read_back(root, module, ctx)
    if failure is None:
        lacking = kp.missing(nb["cmdline"], desired) if nb.get("cmdline") is not None else desired
        if nb.get("errors") or lacking:
            after = f"after `{result['commands'][-1]}` " if ran else ""
            failure = f"{after}the next boot's command line ({nb.get('source')}) {_lacking_message(nb, lacking)}"
    if failure is not None:
        _rollback(root, written, commands if ran else [], run)
        result["changed"] = False
        raise StageError(f"{failure}. " + ("The previous configuration was put back" if written else "Nothing was changed"), result)
    result["regenerated"] = ran
    result["changed"] = result["changed"] or ran
    return _finish(result, nb, ctx, desired)


def _finish(result: dict, nb: dict, ctx: dict, desired: list) -> dict:
    result["next_boot_cmdline"] = nb.get("cmdline")
    result["next_boot_source"] = nb.get("source")
    result["next_boot_entries"] = nb.get("entries") or []
    if nb.get("predicted"):
        result["next_boot_predicted"] = True
    result["warnings"].extend(nb.get("warnings") or [])
    result["warnings"].extend(f"read-back: {e}" for e in nb.get("errors") or [])
    # A reboot is required when the running kernel's command line does not do yet what the entries ask (the check
    # verify_boot makes after it). Not a comparison of the whole lines: the one read back is the bootloader's
    # configuration, where GRUB adds root= and ro itself (Proxmox's /etc/default/grub) and expands variables
    # (Ubuntu's $vt_handoff is vt.handoff=7 in /proc/cmdline), so a host booted with every parameter would be
    # "reboot required" for ever, and rebooted on every run with vfio_reboot_ok.
    result["reboot_required"] = nb.get("cmdline") is not None and bool(kp.missing(ctx["current_cmdline"], desired))
    return result


def _rollback(root: str, written: dict, commands: list, run) -> None:
    """This run's files as they were (journaled again), and the tool re-run on them."""
    journal = Journal(root)
    for path, content in sorted(written.items()):
        try:
            if content is None:
                journal.remove_file(STAGE, path)
            else:
                journal.write_file(STAGE, path, content.encode("utf-8", "surrogateescape"))
        except JournalError:
            pass
    if written and commands:
        for argv in commands:
            run(_in_root(root, argv))


def restore(root: str = "/", check_mode: bool = False, run_command=None, name=None) -> dict:
    """Undo the stage: its files back byte-identical, then the bootloader's tool run on them."""
    run = run_command or run_simple
    journal = Journal(root)
    records = journal.active(STAGE)
    name = name or read_state(root).get("bootloader")  # the bootloader the edit was made for (read before it goes)
    files = journal.restore_files(STAGE, check_mode=check_mode)
    out = {"changed": any(f["changed"] for f in files), "files": files, "devices": [], "runtime": None}
    if out["changed"] and not check_mode:
        ctx = host_context(root, name)
        try:
            module = _resolve_loader(root, ctx)
        except StageError:
            module = None
        commands = module.plan(config.read_paths(root, module.inputs(ctx)), [], ctx).get("commands") or [] if module else []
        ran, failure, cannot = _commands(root, commands, ctx, run)
        if failure:
            raise JournalError(f"the configuration was restored but {failure}; run it by hand")
        if ran:
            out["regenerated"] = [" ".join(c) for c in commands]
        elif cannot:
            out["not_regenerated"] = cannot
    if records and not check_mode:
        journal.mark_restored(STAGE)
    return out


def verify_boot(root: str, entries: list, devices: list) -> dict:
    """After a reboot: does the running command line carry the parameters, and are the devices on vfio-pci?"""
    from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS  # pylint: disable=import-outside-toplevel
    fs = RootFS(root)
    cmdline = fs.read_line("proc/cmdline") or ""
    wanted = kp.validate(list(entries or []))
    lacking = kp.missing(cmdline, wanted)
    drivers = {}
    for addr in devices or []:
        link = os.path.join(root, "sys/bus/pci/devices", addr, "driver")
        drivers[addr] = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
    problems = [f"/proc/cmdline lacks {kp.word(e)}" if e["state"] == "present" else f"/proc/cmdline still has {kp.word(e)}"
                for e in lacking]
    problems += [f"{a} is on {d or 'no driver'}, not vfio-pci" for a, d in sorted(drivers.items()) if d != "vfio-pci"]
    return {"cmdline": cmdline, "drivers": drivers, "ok": not problems, "problems": problems}
