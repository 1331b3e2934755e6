# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel parameters of the bootloader stage: strict validation, the defaults this host really
needs, and the one edit every bootloader applies to its command line words.

Accepted values follow the kernel's Documentation/admin-guide/kernel-parameters.txt. Two
points the guides get wrong: ``amd_iommu=on`` is not a value the kernel knows (the AMD IOMMU is
on whenever the firmware publishes an IVRS table; the kernel logs "Unknown option"), and a
kernel built with ``CONFIG_INTEL_IOMMU_DEFAULT_ON=y`` (Fedora, recent Ubuntu) needs no
``intel_iommu=on``.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
# No blanks, quotes, shell or GRUB metacharacters: the same word is valid in every bootloader file.
# Both are used with fullmatch: "$" would let a trailing newline through into the bootloader file.
VALUE_RE = re.compile(r"[A-Za-z0-9_.,:=/+@%\-]{1,512}")
# The words that make a system boot at all, and the ones a bootloader adds itself.
RESERVED = {"root", "init", "initrd", "boot_image", "rootflags", "rootfstype", "ro", "rw", "resume"}
LOADER_WORDS = ("BOOT_IMAGE=", "initrd=")
STATES = ("present", "absent")

INTEL_IOMMU_VALUES = {"on", "off", "igfx_off", "forcedac", "strict", "sp_off", "sm_on", "sm_off", "tboot_noforce", "nobounce"}
AMD_IOMMU_VALUES = {"fullflush", "off", "force_isolation", "force_enable", "pgtbl_v1", "pgtbl_v2", "irtcachedis",
                    "nohugepages", "v2_pgsizes_only"}
IOMMU_VALUES = {"off", "force", "noforce", "biomerge", "panic", "nopanic", "merge", "nomerge", "soft", "pt", "nopt",
                "forcesac", "allowdac", "nodac", "calgary", "usedac", "noagp", "memaper", "nofullflush", "fullflush"}
KNOWN_VALUES = {"intel_iommu": INTEL_IOMMU_VALUES, "amd_iommu": AMD_IOMMU_VALUES, "iommu": IOMMU_VALUES}
# The IOMMU switches take comma lists and the kernel acts on every occurrence, left to right:
# ``intel_iommu=on intel_iommu=igfx_off`` sets both. An item counts until its opposite follows.
OPPOSITE = {"on": "off", "off": "on", "pt": "nopt", "nopt": "pt", "sm_on": "sm_off", "sm_off": "sm_on"}
# Parameters that stand several times with a meaning each (every console=, dracut reads every
# rd.driver.pre=, kmod every modprobe.blacklist=): "present" adds its value, it never replaces another.
ID_LISTS = {"vfio_pci.ids"}
MODULE_LISTS = {"rd.driver.pre", "rd.driver.post", "rd.driver.blacklist", "modprobe.blacklist"}
MULTI = {"console", "rd.driver.pre", "rd.driver.post", "rd.driver.blacklist", "modprobe.blacklist"}
ACS_OVERRIDE_RE = re.compile(r"downstream|multifunction|id:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")


class ParamError(ValueError):
    """A parameter entry the user must fix; nothing was changed."""


def norm(name: str) -> str:
    """The kernel treats ``-`` and ``_`` in parameter names alike (``vfio-pci.ids`` = ``vfio_pci.ids``)."""
    return name.replace("-", "_").lower()


def slot(name: str, value) -> tuple:
    """What one occurrence of a parameter decides: the name, and for ``video=`` the framebuffer
    driver it addresses (``video=efifb:off`` and ``video=HDMI-A-1:1920x1080`` are independent)."""
    key = norm(name)
    if key == "video":
        return key, (value.split(":", 1)[0] if value and ":" in value else "")
    return key, None


def _check_known_values(name: str, value) -> None:
    """Values of the IOMMU switches the kernel documents; a typo there silently leaves the IOMMU off."""
    known = KNOWN_VALUES.get(norm(name))
    if known is None or value is None:
        return
    bad = [v for v in value.split(",") if v not in known]
    if bad:
        hint = " (the AMD IOMMU is on by default when the firmware enables it; it needs no parameter)" \
            if norm(name) == "amd_iommu" and "on" in bad else ""
        raise ParamError(f"{name}={value}: {', '.join(bad)} is not a value the kernel accepts for {name} "
                         f"(known: {', '.join(sorted(known))}){hint}")


def _conflict(a: dict, b: dict):
    """Why two entries for the same parameter cannot both hold, or None."""
    if a["state"] != b["state"]:
        present, absent = (a, b) if a["state"] == "present" else (b, a)
        if absent["value"] is None or absent["value"] == present["value"]:
            return f"{present['name']} is both present and absent; keep one entry"
        return None
    if a["state"] == "present" and a["value"] != b["value"] and norm(a["name"]) not in MULTI \
            and slot(a["name"], a["value"]) == slot(b["name"], b["value"]):
        return (f"{a['name']} is given twice with different values ({a['value']!r} and {b['value']!r}); "
                f"keep one entry")
    return None


def validate(entries) -> list:
    """``vfio_kernel_params`` entries -> ``[{"name", "value", "state"}]``; raises ParamError on any fault."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ParamError(f"vfio_kernel_params must be a list of {{name, value, state}} entries, not {type(entries).__name__}")
    out = []
    for i, raw in enumerate(entries, 1):
        if not isinstance(raw, dict):
            raise ParamError(f"vfio_kernel_params entry {i} ({raw!r}) must be a mapping with name, value and state")
        unknown = set(raw) - {"name", "value", "state", "reason"}
        if unknown:
            raise ParamError(f"vfio_kernel_params entry {i}: unknown key(s) {', '.join(sorted(unknown))} (use name, value, state)")
        name, value, state = raw.get("name"), raw.get("value"), raw.get("state") or "present"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ParamError(f"vfio_kernel_params entry {i}: name {name!r} is not a kernel parameter name "
                             f"(letters, digits, '_', '-', '.'; e.g. iommu or vfio-pci.ids)")
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (int, float)):
            value = str(value)
        if value is not None and (not isinstance(value, str) or not VALUE_RE.fullmatch(value)):
            raise ParamError(f"vfio_kernel_params entry {i} ({name}): value {value!r} has blanks, quotes or shell characters, "
                             f"or is empty; a kernel parameter value is one word (use value: null for a flag such as 'quiet')")
        if state not in STATES:
            raise ParamError(f"vfio_kernel_params entry {i} ({name}): state {state!r} must be present or absent")
        if norm(name) in RESERVED:
            raise ParamError(f"vfio_kernel_params entry {i}: {name} decides whether the system boots at all; "
                             f"exliar.vfio never adds or removes it (change it with your distribution's tools)")
        if state == "present":
            try:
                _check_known_values(name, value)
            except ParamError as exc:
                raise ParamError(f"vfio_kernel_params entry {i}: {exc}") from exc
        entry = {"name": name, "value": value, "state": state}
        same = [e for e in out if norm(e["name"]) == norm(name)]
        if any(e["value"] == value and e["state"] == state for e in same):
            continue          # the same entry twice
        for other in same:
            why = _conflict(other, entry)
            if why:
                raise ParamError(f"vfio_kernel_params: {why}")
        if raw.get("reason"):
            entry["reason"] = str(raw["reason"])
        out.append(entry)
    return out


def word(entry: dict) -> str:
    return entry["name"] if entry.get("value") is None else f"{entry['name']}={entry['value']}"


def _split_word(w: str) -> tuple:
    name, sep, value = w.partition("=")
    return norm(name.strip('"')), (value.strip('"') if sep else None)


def _occurrences(words: list, entry: dict) -> list:
    """Indexes of the words that are occurrences of the entry's parameter (its slot; for an
    ``absent`` entry without value every word of that name)."""
    key = norm(entry["name"])
    if entry["state"] == "absent" and entry.get("value") is None:
        return [i for i, w in enumerate(words) if _split_word(w)[0] == key]
    want = slot(entry["name"], entry.get("value"))
    return [i for i, w in enumerate(words) if _split_word(w)[0] == key and slot(*_split_word(w)) == want]


def _items(words: list, idx: list) -> list:
    out = []
    for i in idx:
        out.extend((_split_word(words[i])[1] or "").split(","))
    return out


def _items_hold(seq: list, wanted: list) -> bool:
    """Each wanted item of an IOMMU switch is set and not undone by its opposite after it."""
    for item in wanted:
        if item not in seq:
            return False
        opposite = OPPOSITE.get(item)
        if opposite in seq and len(seq) - seq[::-1].index(opposite) > len(seq) - seq[::-1].index(item):
            return False
    return True


def satisfied(words: list, entry: dict) -> bool:
    """True when the command line words already do what the entry asks."""
    idx = _occurrences(words, entry)
    values = [_split_word(words[i])[1] for i in idx]
    value, key = entry.get("value"), norm(entry["name"])
    if entry["state"] == "present":
        if key in KNOWN_VALUES and value is not None:
            return _items_hold(_items(words, idx), value.split(","))
        if key in MODULE_LISTS:  # module names: '-' and '_' alike, any occurrence may carry them
            have = {m.replace("-", "_") for v in values if v for m in v.split(",")}
            return {m.replace("-", "_") for m in value.split(",")} <= have
        if key in MULTI:
            return value in values
        if key in ID_LISTS and values and values[-1] is not None and value is not None:  # the same ids in another order
            return set(values[-1].lower().split(",")) == set(value.lower().split(","))
        return bool(values) and values[-1] == value
    if value is None:
        return not values
    if key in KNOWN_VALUES:
        return not set(value.split(",")) & set(_items(words, idx))
    return value not in values


def _respell(w: str, value) -> str:
    """The word with a new value, in the spelling the command line already uses for the name."""
    name = w.partition("=")[0].strip('"')
    return name if value is None else f"{name}={value}"


def _apply_one(out: list, e: dict, append: bool) -> list:
    if satisfied(out, e):
        return out
    key, value, idx = norm(e["name"]), e.get("value"), _occurrences(out, e)
    if e["state"] == "absent":
        if key in KNOWN_VALUES and value is not None:
            drop, gone = set(), set(value.split(","))
            for i in idx:
                items = [v for v in (_split_word(out[i])[1] or "").split(",") if v not in gone]
                if items:
                    out[i] = _respell(out[i], ",".join(items))
                else:
                    drop.add(i)
        else:
            drop = {i for i in idx if value is None or _split_word(out[i])[1] == value}
        return [w for i, w in enumerate(out) if i not in drop]
    if idx and key not in MULTI:
        last = idx[-1]
        if key in KNOWN_VALUES and value is not None and _split_word(out[last])[1]:
            wanted = value.split(",")
            undo = {OPPOSITE.get(v) for v in wanted}
            kept = [v for v in _split_word(out[last])[1].split(",") if v not in undo and v not in wanted]
            out[last] = _respell(out[last], ",".join(kept + wanted))
        else:
            out[last] = _respell(out[last], value)
    elif append:
        out.append(word(e))
    return out


def apply(words: list, entries: list, append: bool = True) -> list:
    """The command line words after ``entries``; other words keep their place and spelling.

    ``present``: kept when the words already do it (``satisfied``); else the last occurrence's
    value is replaced in place (the kernel and modules read the last one; the IOMMU switches keep
    their other items), in the spelling found there; else appended (when ``append``). Parameters
    that stand several times (``MULTI``, ``video=`` per driver) are added, never replaced.
    ``absent``: every occurrence removed (with a value: only ``name=value``; for the IOMMU switches
    only those items of a comma list).
    """
    out = list(words)
    for e in entries:
        out = _apply_one(out, e, append)
    return out


def edit(text: str, entries: list, append: bool = True) -> str:
    """``apply`` on a command line string; the string comes back unchanged when nothing changes."""
    words = split_cmdline(text or "")
    new = apply(words, entries, append)
    return text if new == words else " ".join(new)


def comparable(text: str) -> list:
    """The words of a command line that a reboot could change: without what the loader adds
    (``BOOT_IMAGE=``, ``initrd=``) and GRUB variables such as ``$vt_handoff``."""
    return sorted(w for w in split_cmdline(text or "") if not w.startswith(LOADER_WORDS) and not w.startswith("$"))


def missing(text: str, entries: list) -> list:
    """The entries a command line does not satisfy yet (for the read-back and the post-reboot check)."""
    words = split_cmdline(text or "")
    return [e for e in entries if not satisfied(words, e)]


def _cmdline_items(facts: dict, name: str) -> list:
    """The items of every ``name=`` on the running command line (comma lists split), in order."""
    out = []
    for p in (facts.get("cmdline") or {}).get("params") or []:
        if isinstance(p, dict) and norm(p.get("name") or "") == name and p.get("value"):
            out.extend(p["value"].split(","))
    return out


def defaults(facts: dict, bind_plan: dict, initramfs_plan: dict, options: dict) -> dict:
    """The parameters this host needs, each with its reason, plus warnings.

    ``options``: ``iommu`` (the vendor switch), ``iommu_pt``, ``vfio_ids`` (bool, default true),
    ``efifb_off`` (bool), ``acs_override`` (value or empty).
    """
    opts = {"iommu": True, "iommu_pt": True, "vfio_ids": True, "efifb_off": False, "acs_override": None}
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    out, warnings = [], []

    def add(name, value, reason, state="present"):
        out.append({"name": name, "value": value, "state": state, "reason": reason})

    iommu = facts.get("iommu") or {}
    kind = iommu.get("type") or ((facts.get("system") or {}).get("cpu") or {}).get("vendor")
    if opts["iommu"]:
        if kind == "intel":
            default_on = iommu.get("kernel_default_on")
            switch = ([v for v in _cmdline_items(facts, "intel_iommu") if v in ("on", "off")] or [None])[-1]
            if default_on is False:
                add("intel_iommu", "on", "this kernel leaves the Intel IOMMU off by default (CONFIG_INTEL_IOMMU_DEFAULT_ON is not set)")
            elif default_on is None:
                add("intel_iommu", "on", "whether this kernel turns the Intel IOMMU on by default is unknown (no kernel "
                    "configuration found for CONFIG_INTEL_IOMMU_DEFAULT_ON); intel_iommu=on makes sure")
            elif switch == "off":
                add("intel_iommu", "on", "the command line turns the Intel IOMMU off (intel_iommu=off) although this kernel "
                    "enables it by default")
        elif kind == "amd":
            items = _cmdline_items(facts, "amd_iommu")
            if "on" in items:
                warnings.append("amd_iommu=on is on the command line but is not a value the kernel knows (it is ignored); "
                                "remove it with vfio_kernel_params: [{name: amd_iommu, value: 'on', state: absent}]")
            if "off" in items:
                add("amd_iommu", "off", "the command line turns the AMD IOMMU off (amd_iommu=off)", state="absent")
        else:
            warnings.append("the IOMMU type of this host is unknown (neither Intel nor AMD): no IOMMU parameter added")
        if kind in ("intel", "amd") and "off" in _cmdline_items(facts, "iommu"):
            add("iommu", "off", "the command line turns every IOMMU off (iommu=off)", state="absent")
    if opts["iommu_pt"] and kind in ("intel", "amd"):
        add("iommu", "pt", "passthrough mode for host devices: only devices given to VMs are translated")
    ids = list((bind_plan or {}).get("ids") or [])
    if opts["vfio_ids"] and ids:
        add("vfio-pci.ids", ",".join(ids), "vfio-pci claims these ids as soon as it loads, also from the initramfs")
    bind_params = list((bind_plan or {}).get("kernel_params") or [])
    for param in bind_params + list((initramfs_plan or {}).get("kernel_params") or []):
        name, _sep, value = param.partition("=")
        value = value or None
        if any(norm(e["name"]) == norm(name) and (norm(name) not in MULTI or e["value"] == value) for e in out):
            continue
        add(name, value, "the binding stage needs it" if param in bind_params
            else "the initramfs generator loads vfio_pci before other drivers with it")
    if opts["efifb_off"]:
        add("video", "efifb:off", "opt-in: the EFI framebuffer releases the boot GPU's memory (kernels before 5.15)")
    acs = opts["acs_override"]
    if acs:
        parts = str(acs).split(",")
        bad = [p for p in parts if not ACS_OVERRIDE_RE.fullmatch(p)]
        if bad:
            raise ParamError(f"vfio_acs_override {acs!r}: {', '.join(bad)} is not downstream, multifunction or id:vvvv:dddd")
        add("pcie_acs_override", acs, "opt-in: split IOMMU groups")
        warnings.append(f"pcie_acs_override={acs} is set on request: it only works on kernels carrying the out-of-tree ACS "
                        "override patch, and it makes the kernel treat devices as isolated that may not be: a VM can then "
                        "reach memory of devices it was not given")
    return {"params": out, "warnings": warnings}


def _overrides(user: dict, computed: dict) -> bool:
    """The user's entry decides the computed one's parameter: same name and slot, or an ``absent``
    entry without value (every value); a removal with a value covers only that value."""
    if norm(user["name"]) != norm(computed["name"]):
        return False
    if user["state"] == "absent":
        return user.get("value") is None or user.get("value") == computed.get("value")
    if computed["state"] == "absent":
        return computed.get("value") is None or computed.get("value") == user.get("value")
    if norm(user["name"]) in MULTI:
        return user.get("value") == computed.get("value")
    return slot(user["name"], user.get("value")) == slot(computed["name"], computed.get("value"))


def merge(computed: list, user: list) -> list:
    """The user's entries win over computed ones for the same parameter (also to remove a default)."""
    return [c for c in computed if not any(_overrides(u, c) for u in user)] + list(user)
