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

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# No blanks, quotes, shell or GRUB metacharacters: the same word is valid in every bootloader file.
VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:=/+@%\-]{1,512}$")
# The words that make a system boot at all, and the ones a bootloader adds itself.
RESERVED = {"root", "init", "initrd", "boot_image", "rootflags", "rootfstype", "ro", "rw", "resume"}
LOADER_WORDS = ("BOOT_IMAGE=", "initrd=")
STATES = ("present", "absent")

INTEL_IOMMU_VALUES = {"on", "off", "igfx_off", "forcedac", "strict", "sp_off", "sm_on", "sm_off", "tboot_noforce", "nobounce"}
AMD_IOMMU_VALUES = {"fullflush", "off", "force_isolation", "force_enable", "pgtbl_v1", "pgtbl_v2", "irtcachedis",
                    "nohugepages", "v2_pgsizes_only"}
IOMMU_VALUES = {"off", "force", "noforce", "biomerge", "panic", "nopanic", "merge", "nomerge", "soft", "pt", "nopt",
                "forcesac", "allowdac", "nodac", "calgary", "usedac", "noagp", "memaper", "nofullflush", "fullflush"}
ACS_OVERRIDE_RE = re.compile(r"^(downstream|multifunction|id:[0-9a-f]{4}:[0-9a-f]{4})$")


class ParamError(ValueError):
    """A parameter entry the user must fix; nothing was changed."""


def norm(name: str) -> str:
    """The kernel treats ``-`` and ``_`` in parameter names alike (``vfio-pci.ids`` = ``vfio_pci.ids``)."""
    return name.replace("-", "_").lower()


def _check_known_values(name: str, value) -> None:
    """Values of the IOMMU switches the kernel documents; a typo there silently leaves the IOMMU off."""
    known = {"intel_iommu": INTEL_IOMMU_VALUES, "amd_iommu": AMD_IOMMU_VALUES, "iommu": IOMMU_VALUES}.get(norm(name))
    if known is None or value is None:
        return
    bad = [v for v in value.split(",") if v not in known]
    if bad:
        hint = " (the AMD IOMMU is on by default when the firmware enables it; it needs no parameter)" \
            if norm(name) == "amd_iommu" and "on" in bad else ""
        raise ParamError(f"{name}={value}: {', '.join(bad)} is not a value the kernel accepts for {name} "
                         f"(known: {', '.join(sorted(known))}){hint}")


def validate(entries) -> list:
    """``vfio_kernel_params`` entries -> ``[{"name", "value", "state"}]``; raises ParamError on any fault."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ParamError(f"vfio_kernel_params must be a list of {{name, value, state}} entries, not {type(entries).__name__}")
    out, seen = [], {}
    for i, raw in enumerate(entries, 1):
        if not isinstance(raw, dict):
            raise ParamError(f"vfio_kernel_params entry {i} ({raw!r}) must be a mapping with name, value and state")
        unknown = set(raw) - {"name", "value", "state", "reason"}
        if unknown:
            raise ParamError(f"vfio_kernel_params entry {i}: unknown key(s) {', '.join(sorted(unknown))} (use name, value, state)")
        name, value, state = raw.get("name"), raw.get("value"), raw.get("state") or "present"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ParamError(f"vfio_kernel_params entry {i}: name {name!r} is not a kernel parameter name "
                             f"(letters, digits, '_', '-', '.'; e.g. iommu or vfio-pci.ids)")
        if isinstance(value, bool) or isinstance(value, (int, float)):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        if value is not None and (not isinstance(value, str) or not VALUE_RE.match(value)):
            raise ParamError(f"vfio_kernel_params entry {i} ({name}): value {value!r} has blanks, quotes or shell characters, "
                             f"or is empty; a kernel parameter value is one word (use value: null for a flag such as 'quiet')")
        if state not in STATES:
            raise ParamError(f"vfio_kernel_params entry {i} ({name}): state {state!r} must be present or absent")
        if norm(name) in RESERVED or name.lower() == "boot_image":
            raise ParamError(f"vfio_kernel_params entry {i}: {name} decides whether the system boots at all; "
                             f"exliar.vfio never adds or removes it (change it with your distribution's tools)")
        if state == "present":
            _check_known_values(name, value)
        key = norm(name)
        if key in seen:
            other = seen[key]
            if other["state"] != state:
                raise ParamError(f"vfio_kernel_params: {name} is both present and absent; keep one entry")
            if state == "present" and other["value"] != value:
                raise ParamError(f"vfio_kernel_params: {name} is given twice with different values "
                                 f"({other['value']!r} and {value!r}); keep one entry")
            continue
        entry = {"name": name, "value": value, "state": state}
        if raw.get("reason"):
            entry["reason"] = str(raw["reason"])
        seen[key] = entry
        out.append(entry)
    return out


def word(entry: dict) -> str:
    return entry["name"] if entry.get("value") is None else f"{entry['name']}={entry['value']}"


def _split_word(w: str) -> tuple:
    name, sep, value = w.partition("=")
    return norm(name.strip('"')), (value.strip('"') if sep else None)


def satisfied(words: list, entry: dict) -> bool:
    """True when the command line words already do what the entry asks."""
    key = norm(entry["name"])
    values = [v for n, v in map(_split_word, words) if n == key]
    if entry["state"] == "present":
        return bool(values) and values[-1] == entry.get("value")
    if entry.get("value") is None:
        return not values
    return entry["value"] not in values


def apply(words: list, entries: list, append: bool = True) -> list:
    """The command line words after ``entries``; other words keep their place and spelling.

    ``present``: kept when the last occurrence has the value; else the last occurrence's value is
    replaced in place (the kernel and modules read the last one); else appended (when ``append``).
    ``absent``: every occurrence removed (with a value: only ``name=value``).
    """
    out = list(words)
    for e in entries:
        key = norm(e["name"])
        idx = [i for i, w in enumerate(out) if _split_word(w)[0] == key]
        if e["state"] == "absent":
            drop = {i for i in idx if e.get("value") is None or _split_word(out[i])[1] == e["value"]}
            out = [w for i, w in enumerate(out) if i not in drop]
        elif idx:
            if _split_word(out[idx[-1]])[1] != e.get("value"):
                out[idx[-1]] = word(e)
        elif append:
            out.append(word(e))
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


def defaults(facts: dict, bind_plan: dict, initramfs_plan: dict, options: dict) -> dict:
    """The parameters this host needs, each with its reason, plus warnings.

    ``options``: ``iommu`` (the vendor switch), ``iommu_pt``, ``vfio_ids`` (bool, default true),
    ``efifb_off`` (bool), ``acs_override`` (value or empty).
    """
    opts = {"iommu": True, "iommu_pt": True, "vfio_ids": True, "efifb_off": False, "acs_override": None}
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    out, warnings = [], []

    def add(name, value, reason):
        out.append({"name": name, "value": value, "state": "present", "reason": reason})

    iommu = facts.get("iommu") or {}
    kind = iommu.get("type") or ((facts.get("system") or {}).get("cpu") or {}).get("vendor")
    if opts["iommu"]:
        if kind == "intel":
            default_on = iommu.get("kernel_default_on")
            if default_on is not True:
                add("intel_iommu", "on", "this kernel leaves the Intel IOMMU off by default (CONFIG_INTEL_IOMMU_DEFAULT_ON "
                    + ("is not set)" if default_on is False else "unknown: no kernel config found)"))
        elif kind == "amd":
            if any(norm(p.get("name") or "") == "amd_iommu" and p.get("value") == "on"
                   for p in (facts.get("cmdline") or {}).get("params") or []):
                warnings.append("amd_iommu=on is on the command line but is not a value the kernel knows (it is ignored); "
                                "remove it with vfio_kernel_params: [{name: amd_iommu, value: 'on', state: absent}]")
        else:
            warnings.append("the IOMMU type of this host is unknown (neither Intel nor AMD): no IOMMU parameter added")
    if opts["iommu_pt"] and kind in ("intel", "amd"):
        add("iommu", "pt", "passthrough mode for host devices: only devices given to VMs are translated")
    ids = list((bind_plan or {}).get("ids") or [])
    if opts["vfio_ids"] and ids:
        add("vfio-pci.ids", ",".join(ids), "vfio-pci claims these ids as soon as it loads, also from the initramfs")
    for param in list((bind_plan or {}).get("kernel_params") or []) + list((initramfs_plan or {}).get("kernel_params") or []):
        name, _sep, value = param.partition("=")
        if any(norm(e["name"]) == norm(name) for e in out):
            continue
        add(name, value or None, "the binding stage needs it" if param in ((bind_plan or {}).get("kernel_params") or [])
            else "the initramfs generator loads vfio_pci before other drivers with it")
    if opts["efifb_off"]:
        add("video", "efifb:off", "opt-in: the EFI framebuffer releases the boot GPU's memory (kernels before 5.15)")
    acs = opts["acs_override"]
    if acs:
        parts = str(acs).split(",")
        bad = [p for p in parts if not ACS_OVERRIDE_RE.match(p)]
        if bad:
            raise ParamError(f"vfio_acs_override {acs!r}: {', '.join(bad)} is not downstream, multifunction or id:vvvv:dddd")
        add("pcie_acs_override", acs, "opt-in: split IOMMU groups")
        warnings.append(f"pcie_acs_override={acs} is set on request: it only works on kernels carrying the out-of-tree ACS "
                        "override patch, and it makes the kernel treat devices as isolated that may not be: a VM can then "
                        "reach memory of devices it was not given")
    return {"params": out, "warnings": warnings}


def merge(computed: list, user: list) -> list:
    """The user's entries win over computed ones with the same name (also to remove a default)."""
    users = {norm(e["name"]) for e in user}
    return [e for e in computed if norm(e["name"]) not in users] + list(user)
