# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The binding stage on the target: plan from fresh facts, write the persistent files through
the journal, bind in the running kernel, and undo all of it."""
from __future__ import annotations

import os

from ansible_collections.exliar.vfio.plugins.module_utils import _sysfs_bind as sysfs
from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import MODPROBE_CONF, OVERRIDE_SCRIPT, PLAN_RECORD, make_plan
from ansible_collections.exliar.vfio.plugins.module_utils._selection import normalize_address
from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.module_utils._hostuse import effective_connection_address
from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError

STAGE = "bind"


class StageError(Exception):
    """The stage stopped; ``result`` says what was done before."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def normalize(addr) -> str:
    return normalize_address(addr)


def public(result: dict) -> dict:
    """The module's return value: the result without its warnings, plus one diff per changed file
    and one for the devices whose driver changes."""
    out = {k: v for k, v in result.items() if k != "warnings"}
    diffs = [f["diff"] for f in result.get("files") or [] if f.get("changed")]
    moved = [d for d in result.get("devices") or [] if d.get("changed")]
    if moved:
        diffs.append({
            "before_header": "drivers in the running kernel", "after_header": "drivers in the running kernel",
            "before": "".join(f"{d['address']} {d.get('driver_before') or '(none)'}\n" for d in moved),
            "after": "".join(f"{d['address']} {d.get('driver_after') or sysfs.VFIO}\n" for d in moved),
        })
    out["diff"] = diffs
    out["changed"] = bool(result.get("changed"))
    return out


def is_live(root: str) -> bool:
    """True when ``root`` is this machine's own ``/``, the only place a kernel can bind devices."""
    try:
        return os.path.samefile(root or "/", "/")
    except OSError:
        return False


def runtime_applies(root: str, runtime: str) -> tuple:
    if runtime == "never":
        return False, "runtime binding switched off (runtime: never)"
    if is_live(root):
        return True, None
    if runtime == "always":
        raise ValueError(f"runtime: always needs root to be the running system's /, not {root}")
    return False, f"{root} is not the running system: only the persistent configuration is written"


# The script first, the modprobe file that names it next, the record of the plan last.
WRITE_ORDER = (OVERRIDE_SCRIPT, MODPROBE_CONF, PLAN_RECORD)


def _current_bytes(root: str, path: str):
    try:
        with open(os.path.join(root, path.lstrip("/")), "rb") as f:
            return f.read(), os.stat(f.fileno()).st_mode & 0o7777
    except OSError:
        return None, None


def _file_results(journal: Journal, root: str, files: dict, check_mode: bool) -> list:
    """Write every file of the plan, or none: a failure puts back the ones written before it."""
    ordered = sorted(files.items(), key=lambda kv: WRITE_ORDER.index(kv[0]) if kv[0] in WRITE_ORDER else len(WRITE_ORDER))
    if not check_mode:
        journal.preflight([path for path, spec in ordered if spec is not None])
    out, done = [], []
    try:
        for path, spec in ordered:
            before, mode = _current_bytes(root, path) if not check_mode else (None, None)
            if spec is None:
                res = journal.remove_file(STAGE, path, check_mode=check_mode)
            else:
                res = journal.write_file(STAGE, path, spec["content"].encode(), mode=spec["mode"], check_mode=check_mode)
            out.append(res)
            if res["changed"] and not check_mode:
                done.append((path, before, mode))
    except JournalError as exc:
        if not done:
            raise
        for path, before, mode in reversed(done):
            try:
                if before is None:
                    journal.remove_file(STAGE, path)
                else:
                    journal.write_file(STAGE, path, before, mode=mode)
            except JournalError:
                pass
        raise JournalError(f"{exc} (the files written before it were put back: {', '.join(p for p, _b, _m in done)})") from exc
    return out


def apply(root: str, devices, options: dict, runtime: str, check_mode: bool, run_command,
          connection_address=None, expect=None, plugin_records=()) -> dict:
    facts = gather_facts(root, connection_address=effective_connection_address(root, connection_address, os.environ))
    plan = make_plan(facts, devices, options, recorded=(facts.get("managed") or {}).get("bind"))
    result = {"changed": False, "plan": plan, "files": [], "devices": [], "runtime": None, "warnings": plan["warnings"]}
    if plan["status"] == "refused":
        raise StageError("refused: " + " | ".join(plan["errors"] + [r["message"] for r in plan["refusals"]]), result)
    if expect is not None and sorted(expect) != sorted(d["address"] for d in plan["devices"]):
        raise StageError(f"the host changed since detection: the plan now covers {[d['address'] for d in plan['devices']]}, "
                         f"the controller planned {sorted(expect)}; run the play again", result)
    if plan["status"] == "empty":
        return result
    live, why_not = runtime_applies(root, runtime)
    result["runtime"] = "applied" if live else why_not
    journal = Journal(root)
    try:
        result["files"] = _file_results(journal, root, plan["files"], check_mode)
    except JournalError as exc:
        raise StageError(str(exc), result) from exc
    for dev in plan["devices"]:
        now = sysfs.current_driver(root, dev["address"]) if live else dev["driver"]
        entry = {"address": dev["address"], "driver_before": now, "changed": False}
        result["devices"].append(entry)
        if not live or now == sysfs.VFIO:
            continue
        entry["changed"] = True
        if check_mode:
            continue
        journal.record(STAGE, "device", address=dev["address"], driver_before=dev["driver_before"],
                       module_before=dev["module_before"], iommu_group=dev["iommu_group"])
        try:
            sysfs.bind(root, dev["address"], dev["iommu_group"], run_command)
        except sysfs.BindError as exc:
            result["changed"] = True
            raise StageError(str(exc), result) from exc
    if not check_mode:
        for rec in plugin_records:
            journal.record(STAGE, "plugin", **rec)
    result["changed"] = any(f["changed"] for f in result["files"]) or any(d["changed"] for d in result["devices"])
    return result


def release(root: str, addresses: list, check_mode: bool, run_command) -> dict:
    """``state: absent`` for single devices: back on the driver they had before the first bind."""
    journal = Journal(root)
    live, why_not = runtime_applies(root, "auto")
    originals = {}
    for rec in journal.active(STAGE, "device"):
        originals.setdefault(rec["address"], rec)
    out = {"changed": False, "devices": [], "runtime": "applied" if live else why_not}
    for addr in addresses:
        rec = originals.get(addr, {})
        now = sysfs.current_driver(root, addr) if live else None
        entry = {"address": addr, "driver_before": now, "driver_after": rec.get("driver_before") or "(none)", "changed": False}
        out["devices"].append(entry)
        if not live:
            continue
        entry["changed"] = now != rec.get("driver_before") or sysfs.override_of(root, addr) is not None
        if entry["changed"] and not check_mode:
            sysfs.release(root, addr, rec.get("driver_before"), rec.get("module_before"), run_command)
    out["changed"] = any(d["changed"] for d in out["devices"])
    return out


def restore(root: str, check_mode: bool, run_command) -> dict:
    """Undo the stage: the files as they were (byte-identical), the devices back on their drivers."""
    journal = Journal(root)
    records = journal.active(STAGE)
    files = journal.restore_files(STAGE, check_mode=check_mode)
    addresses = []
    for rec in reversed([r for r in records if r.get("kind") == "device"]):
        if rec["address"] not in addresses:
            addresses.append(rec["address"])
    released = release(root, addresses, check_mode, run_command) if addresses else {"devices": [], "changed": False, "runtime": None}
    if records and not check_mode:
        journal.mark_restored(STAGE)
    return {"changed": any(f["changed"] for f in files) or released["changed"], "files": files,
            "devices": released["devices"], "runtime": released["runtime"]}
