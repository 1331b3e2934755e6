"""Benchmarks for exliar.vfio: ratios measured in one run, never absolute-time assertions.

Not part of the test run (pytest does not collect it, nothing here fails on a slow machine).
Run it with ``./dev.sh bench`` or ``.venv/bin/python tests/bench/run.py [--quick] [--hosts N]``;
see tests/bench/README.md for what each benchmark compares and how to read the ratios.

1. facts   -- ``vfio_facts`` on the lab profile with the most PCI devices against the classic
              Arch wiki IOMMU group script (one ``lspci -nns`` per device), each in a fresh process.
2. playbook -- a converged re-run of playbooks/vfio.yml on many lab hosts against a floor
              playbook that runs one ansible.builtin.ping per host, with the same forks.

Prints a table and writes tests/bench/results/latest.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".collections"
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
BUILDER = REPO / "lab" / "build_sysroot.py"
PROFILES = REPO / "lab" / "profiles"
PLAYBOOK = REPO / "playbooks" / "vfio.yml"
MODULE = REPO / "plugins" / "modules" / "vfio_facts.py"

# The Arch wiki script ("Ensuring that the groups are valid"), unchanged except that it reads a
# sysroot: the group directory sits below $root and lspci is pointed at the sysroot's sysfs.
WIKI_SCRIPT = r"""
root=$1
shopt -s nullglob
for g in $(find $root/sys/kernel/iommu_groups/* -maxdepth 0 -type d | sort -V); do
    echo "IOMMU Group ${g##*/}:"
    for d in $g/devices/*; do
        echo -e "\t$(lspci -A linux-sysfs -O sysfs.path=$root/sys/bus/pci -nns ${d##*/})"
    done;
done;
"""

# Our side as a fresh process: interpreter start-up and every import are paid, as the wiki
# script pays a process start per lspci call. The facts are printed as JSON, as the module does.
OURS_CODE = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts\n"
    "json.dump(gather_facts(sys.argv[2]), sys.stdout)\n"
)

# The detection work alone: one process imports once, then times each call itself.
INPROCESS_CODE = (
    "import json, sys, time\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts\n"
    "out = []\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    w, c = time.perf_counter(), time.process_time()\n"
    "    gather_facts(sys.argv[2])\n"
    "    out.append({'wall': time.perf_counter() - w, 'cpu': time.process_time() - c})\n"
    "json.dump(out, sys.stdout)\n"
)

DETECT_PLAYBOOK = """---
- name: Detection only - the vfio.yml play without the binding stage
  hosts: all
  gather_facts: false
  roles:
    - role: exliar.vfio.detect
"""

FLOOR_PLAYBOOK = """---
- name: Floor - one trivial module per host
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""

RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)", re.M)


# ---- helpers ---------------------------------------------------------------------------------
def venv_python() -> str:
    """The venv interpreter, unresolved (resolving the link would leave the venv)."""
    cand = REPO / ".venv" / "bin" / "python"
    return str(cand) if cand.exists() else sys.executable


def tool(name: str) -> str | None:
    cand = Path(venv_python()).parent / name
    return str(cand) if cand.exists() else shutil.which(name)


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "PATH": str(Path(venv_python()).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra or {})
    return env


class RunFailed(RuntimeError):
    pass


def timed(cmd: list, env: dict | None = None, stdout=subprocess.PIPE, cwd: Path = REPO) -> dict:
    """Run cmd once; wall seconds and CPU seconds (user+sys of it and every child it reaped)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT if stdout is not subprocess.PIPE
                          else subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else ""
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise RunFailed(f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}\n{(err or out)[-2000:]}")
    return {"wall": wall, "cpu": cpu, "out": out}


def summarise(samples: list) -> dict:
    walls = [s["wall"] for s in samples]
    cpus = [s["cpu"] for s in samples]
    return {
        "n": len(samples),
        "wall_median_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
        "cpu_median_s": statistics.median(cpus),
        "wall_samples_s": [round(w, 4) for w in walls], "cpu_samples_s": [round(c, 4) for c in cpus],
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def print_table(headers: list, rows: list) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


# ---- sysroots --------------------------------------------------------------------------------
def build_sysroots(out: Path) -> tuple:
    """Build every profile into out; profiles that do not build (being edited) are skipped."""
    py = venv_python()
    proc = subprocess.run([py, str(BUILDER), "--all", "--out", str(out)], capture_output=True, text=True, check=False)
    skipped = {}
    if proc.returncode != 0:
        # One broken profile stops --all; build the others one by one.
        for p in sorted(PROFILES.glob("*.yml")):
            one = subprocess.run([py, str(BUILDER), str(p), "--out", str(out)], capture_output=True, text=True, check=False)
            if one.returncode != 0:
                skipped[p.stem] = (one.stderr or one.stdout).strip().splitlines()[-1:] or ["failed"]
    roots = {}
    for p in sorted(PROFILES.glob("*.yml")):
        root = out / p.stem
        if p.stem not in skipped and (root / ".profile-hash").exists():
            devices = root / "sys" / "bus" / "pci" / "devices"
            groups = root / "sys" / "kernel" / "iommu_groups"
            roots[p.stem] = {
                "root": root,
                "pci_devices": len(list(devices.iterdir())) if devices.is_dir() else 0,
                "iommu_groups": len(list(groups.iterdir())) if groups.is_dir() else 0,
            }
    return roots, skipped


def pick_largest(roots: dict) -> tuple:
    """The profile with the most PCI devices; the wiki script needs IOMMU groups to list anything."""
    by_size = sorted(roots, key=lambda k: (-roots[k]["pci_devices"], k))
    largest = by_size[0]
    if roots[largest]["iommu_groups"]:
        return largest, None
    with_groups = [k for k in by_size if roots[k]["iommu_groups"]]
    if not with_groups:
        return largest, f"{largest} has no IOMMU groups and no profile has any: the wiki script lists nothing"
    return with_groups[0], f"{largest} has the most PCI devices but its IOMMU is off; using {with_groups[0]}"


# ---- benchmark 1: vfio_facts vs the wiki script ---------------------------------------------------
def bench_facts(roots: dict, args, tmp: Path) -> dict:
    pid, note = pick_largest(roots)
    info = roots[pid]
    root = str(info["root"])
    py = venv_python()
    lspci = shutil.which("lspci")
    ansible = tool("ansible")
    args_file = tmp / "module-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"root": root}}))
    module_env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    adhoc = [ansible, "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={py}", "localhost"]

    variants = {}  # key -> (label, command, env), in table order
    if lspci:
        variants["wiki"] = ("wiki script (bash + lspci -nns per device)", ["bash", "-c", WIKI_SCRIPT, "wiki", root], None)
    variants["python"] = ("ours: gather_facts() in python -c", [py, "-c", OURS_CODE, str(COLLECTIONS), root], None)
    variants["module"] = ("ours: vfio_facts.py run directly", [py, str(MODULE), str(args_file)], module_env)
    if not args.no_adhoc and ansible:
        variants["adhoc"] = ("ours: ansible -m exliar.vfio.vfio_facts",
                             adhoc + ["-m", "exliar.vfio.vfio_facts", "-a", f"root={root}"], ansible_env())
        variants["adhoc_ping"] = ("floor: ansible -m ansible.builtin.ping", adhoc + ["-m", "ansible.builtin.ping"],
                                  ansible_env())

    print(f"\n== facts: {pid} ({info['pci_devices']} PCI devices, {info['iommu_groups']} IOMMU groups), "
          f"N={args.repeat} per variant, interleaved, after one warm-up each")
    if note:
        print(f"   note: {note}")
    if not lspci:
        print("   note: lspci not found (./dev.sh setup installs pciutils); the wiki script is skipped")

    checks = {}
    for key, (_label, cmd, env) in variants.items():  # warm-up, and check that each side sees the same devices
        out = timed(cmd, env)["out"]
        if key == "wiki":
            checks["wiki_devices_listed"] = sum(1 for line in out.splitlines() if line.startswith("\t") and line.strip())
            checks["wiki_groups_listed"] = sum(1 for line in out.splitlines() if line.startswith("IOMMU Group"))
        elif key == "python":
            facts = json.loads(out)
            checks["ours_pci_devices"] = len(facts["pci_devices"])
            checks["ours_groups"] = len(facts["iommu_groups"])
            checks["ours_group_devices"] = sum(len(g["devices"]) for g in facts["iommu_groups"])
            checks["ours_warnings"] = len(facts["warnings"])
        elif key == "adhoc" and "SUCCESS" not in out:
            raise RunFailed(f"ad-hoc vfio_facts did not succeed:\n{out[-2000:]}")
    samples = {key: [] for key in variants}
    for _round in range(args.repeat):
        for key, (_label, cmd, env) in variants.items():
            samples[key].append(timed(cmd, env))

    # The work without start-up or imports, timed inside one process (one warm-up call, not counted).
    inproc = json.loads(timed([py, "-c", INPROCESS_CODE, str(COLLECTIONS), root, str(args.repeat + 1)])["out"])[1:]
    samples["inprocess"] = inproc
    labels = {key: v[0] for key, v in variants.items()}
    labels["inprocess"] = "ours: gather_facts() in-process, no start-up"
    order = [k for k in ("wiki", "python", "inprocess", "module", "adhoc", "adhoc_ping") if k in samples]

    stats = {key: summarise(samples[key]) for key in order}
    for key in order:
        stats[key]["label"] = labels[key]
    wiki = stats.get("wiki")
    for key in stats:
        if wiki and key != "wiki":
            stats[key]["ratio_wiki_over_this_wall"] = ratio(wiki["wall_median_s"], stats[key]["wall_median_s"])
            stats[key]["ratio_wiki_over_this_cpu"] = ratio(wiki["cpu_median_s"], stats[key]["cpu_median_s"])
    extra = {}
    if "adhoc" in stats and "adhoc_ping" in stats:
        extra["adhoc_minus_ping_wall_ms"] = round(1000 * (stats["adhoc"]["wall_median_s"] - stats["adhoc_ping"]["wall_median_s"]), 1)

    rows = []
    for key in order:
        s = stats[key]
        rows.append([labels[key], s["n"], f"{1000 * s['wall_median_s']:.1f}", f"{1000 * s['wall_min_s']:.1f}",
                     f"{1000 * s['wall_max_s']:.1f}", f"{1000 * s['cpu_median_s']:.1f}",
                     "(reference)" if key == "wiki" else fmt_ratio(s.get("ratio_wiki_over_this_wall")),
                     "" if key == "wiki" else fmt_ratio(s.get("ratio_wiki_over_this_cpu"))])
    print()
    print_table(["variant", "N", "median ms", "min ms", "max ms", "cpu ms", "wiki/this", "wiki/this cpu"], rows)
    if wiki:
        per_dev = 1000 * wiki["wall_median_s"] / max(checks.get("wiki_devices_listed", 0), 1)
        print(f"\n   wiki script: {per_dev:.1f} ms per device listed ({checks.get('wiki_devices_listed')} devices, "
              f"{checks.get('wiki_groups_listed')} groups); ours lists {checks.get('ours_group_devices')} devices in "
              f"{checks.get('ours_groups')} groups and {checks.get('ours_pci_devices')} PCI devices in all")
    if "adhoc_minus_ping_wall_ms" in extra:
        print(f"   ansible ad-hoc: vfio_facts costs {extra['adhoc_minus_ping_wall_ms']:.0f} ms more than ping")
    return {"profile": pid, "profile_note": note, **{k: v for k, v in info.items() if k != "root"},
            "repeat": args.repeat, "checks": checks, "variants": stats, **extra}


# ---- benchmark 2: playbook on many hosts vs a ping floor --------------------------------------------
BIND_SELECTION = [{"gpus": "discrete_except_boot"}]


def bindable(roots: dict) -> set:
    """Profiles whose binding plan for BIND_SELECTION is ok (the others are refused on purpose)."""
    sys.path.insert(0, str(COLLECTIONS))
    from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import make_plan  # noqa: PLC0415
    from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts  # noqa: PLC0415
    return {pid for pid, r in roots.items() if make_plan(gather_facts(str(r["root"])), BIND_SELECTION)["status"] == "ok"}


def write_inventory(path: Path, roots: dict, hosts: int) -> list:
    """``hosts`` hosts cycling over the sysroots; those whose plan is ok also run the binding stage."""
    ids = sorted(roots)
    can_bind = bindable(roots)
    names = {}
    for i in range(hosts):
        pid = ids[i % len(ids)]
        names[f"{pid}-{i:03d}"] = {"vfio_root": str(roots[pid]["root"]),
                                   "vfio_devices": BIND_SELECTION if pid in can_bind else []}
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": venv_python()},
                   "hosts": names}}
    path.write_text(json.dumps(inv, indent=1))  # JSON is YAML: the yaml inventory plugin reads it
    return list(names)


def run_playbook(playbook: Path, inventory: Path, log: Path, env: dict, expect_hosts: int, expect_ok: int | None) -> dict:
    ansible_playbook = tool("ansible-playbook")
    with log.open("wb") as fh:
        try:
            res = timed([ansible_playbook, "-i", str(inventory), str(playbook)], env, stdout=fh)
        except RunFailed as exc:
            raise RunFailed(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    text = log.read_text(errors="replace")
    recap = [m.groupdict() for m in RECAP_RE.finditer(text)]
    bad = [r["host"] for r in recap if int(r["failed"]) or int(r["unreachable"])
           or (expect_ok is not None and int(r["ok"]) != expect_ok)]
    if len(recap) != expect_hosts or bad:
        raise RunFailed(f"{playbook.name}: {len(recap)} hosts in the recap (want {expect_hosts}), not ok: {bad[:5]}; "
                        f"log {log}\n{text[-3000:]}")
    res["changed"] = sum(int(r["changed"]) for r in recap)
    res["tasks_ok_per_host"] = sorted({int(r["ok"]) for r in recap})
    return res


def bench_playbook(roots: dict, args, tmp: Path) -> dict:
    forks = args.forks
    extra = {}
    if forks:
        extra["ANSIBLE_FORKS"] = str(forks)
    if args.no_summary:
        # An empty callbacks_enabled crashes ansible-core 2.19; naming the stdout callback disables the summary.
        extra["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.builtin.default"
    env = ansible_env(extra)
    if not forks:
        out = subprocess.run([tool("ansible-config"), "dump"], env=env, capture_output=True, text=True, check=False).stdout
        m = re.search(r"^DEFAULT_FORKS\(.*?\)\s*=\s*(\d+)", out, re.M)
        forks = int(m.group(1)) if m else None
    floor = tmp / "floor.yml"
    floor.write_text(FLOOR_PLAYBOOK)
    inv = tmp / "inventory.yml"
    hosts = write_inventory(inv, roots, args.hosts)
    warm_inv = tmp / "warmup.yml"
    write_inventory(warm_inv, roots, len(roots))

    print(f"\n== playbook: {args.hosts} hosts cycling over {len(roots)} lab sysroots, forks={forks}, "
          f"N={args.pb_repeat} per playbook, interleaved, after a warm-up on {len(roots)} hosts; "
          f"summary callback {'off' if args.no_summary else 'on (output to a log file)'}")
    run_playbook(PLAYBOOK, warm_inv, tmp / "warmup-vfio.log", env, len(roots), None)
    run_playbook(floor, warm_inv, tmp / "warmup-floor.log", env, len(roots), 1)

    detect = tmp / "detect.yml"
    detect.write_text(DETECT_PLAYBOOK)
    samples = {"floor": [], "detect": [], "vfio": []}
    books = {"floor": (floor, 1), "detect": (detect, None), "vfio": (PLAYBOOK, None)}
    for r in range(args.pb_repeat):
        order = ["floor", "detect", "vfio"] if r % 2 == 0 else ["vfio", "detect", "floor"]
        for which in order:
            pb, ok = books[which]
            started = time.perf_counter()
            print(f"   run {r + 1}/{args.pb_repeat}: {which} ...", end="", flush=True)
            samples[which].append(run_playbook(pb, inv, tmp / f"{which}-{r}.log", env, len(hosts), ok))
            print(f" {time.perf_counter() - started:.1f} s", flush=True)
    vfio_changed = [s["changed"] for s in samples["vfio"]]
    tasks_ok = sorted({t for s in samples["vfio"] for t in s["tasks_ok_per_host"]})
    stats = {k: summarise(v) for k, v in samples.items()}
    for k, s in stats.items():
        s["per_host_ms"] = round(1000 * s["wall_median_s"] / args.hosts, 2)
        s["cpu_per_host_ms"] = round(1000 * s["cpu_median_s"] / args.hosts, 2)
    result = {
        "hosts": args.hosts, "profiles": sorted(roots), "forks": forks, "repeat": args.pb_repeat,
        "summary_callback": not args.no_summary, "vfio_tasks_ok_per_host": tasks_ok, "vfio_changed": vfio_changed,
        "floor": stats["floor"], "vfio": stats["vfio"],
        "ratio_vfio_over_floor_wall": ratio(stats["vfio"]["wall_median_s"], stats["floor"]["wall_median_s"]),
        "ratio_vfio_over_floor_cpu": ratio(stats["vfio"]["cpu_median_s"], stats["floor"]["cpu_median_s"]),
        "vfio_minus_floor_per_host_ms": round(stats["vfio"]["per_host_ms"] - stats["floor"]["per_host_ms"], 2),
        "detect": stats["detect"],
        "ratio_vfio_over_detect_wall": ratio(stats["vfio"]["wall_median_s"], stats["detect"]["wall_median_s"]),
        "ratio_vfio_over_detect_cpu": ratio(stats["vfio"]["cpu_median_s"], stats["detect"]["cpu_median_s"]),
        "bind_per_host_ms": round(stats["vfio"]["per_host_ms"] - stats["detect"]["per_host_ms"], 2),
    }
    rows = []
    for k, label in (("floor", "floor: ansible.builtin.ping"), ("detect", "detect role only"),
                     ("vfio", "playbooks/vfio.yml (converged)")):
        s = stats[k]
        rows.append([label, s["n"], f"{s['wall_median_s']:.2f}", f"{s['wall_min_s']:.2f}", f"{s['wall_max_s']:.2f}",
                     f"{s['per_host_ms']:.1f}", f"{s['cpu_median_s']:.2f}", f"{s['cpu_per_host_ms']:.1f}"])
    print()
    print_table(["playbook", "N", "median s", "min s", "max s", "ms/host", "cpu s", "cpu ms/host"], rows)
    print(f"\n   vfio/floor: {fmt_ratio(result['ratio_vfio_over_floor_wall'])} wall, "
          f"{fmt_ratio(result['ratio_vfio_over_floor_cpu'])} cpu; vfio costs "
          f"{result['vfio_minus_floor_per_host_ms']:.1f} ms more per host than ping "
          f"(vfio runs {'/'.join(map(str, tasks_ok))} tasks per host, the floor 1; changed={vfio_changed})")
    print(f"   vfio/detect: {fmt_ratio(result['ratio_vfio_over_detect_wall'])} wall, "
          f"{fmt_ratio(result['ratio_vfio_over_detect_cpu'])} cpu: the converged stages after detection cost "
          f"{result['bind_per_host_ms']:.1f} ms per host (binding planned on the controller without a module call; "
          f"one module call each for the initramfs and bootloader stages)")
    return result


# ---- main ------------------------------------------------------------------------------------
def versions() -> dict:
    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        from ansible.release import __version__ as core  # noqa: PLC0415  (only for the report)
        out["ansible_core"] = core
    except ImportError:
        out["ansible_core"] = None
    lspci = shutil.which("lspci")
    if lspci:
        out["lspci"] = subprocess.run([lspci, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):  # --suite plugins: the options that follow are plugins_bench.py's own
        if a == "--suite=plugins" or (a == "--suite" and argv[i + 1:i + 2] == ["plugins"]):
            import plugins_bench  # noqa: PLC0415  (tests/bench/plugins_bench.py, beside this file)
            return plugins_bench.main(argv[:i] + argv[i + (1 if "=" in a else 2):])
    ap = argparse.ArgumentParser(description="exliar.vfio benchmarks (ratios, not pass/fail)")
    ap.add_argument("--suite", choices=["main", "plugins"], default="main",
                    help="plugins: the extension-plugin benchmarks of tests/bench/plugins_bench.py instead")
    ap.add_argument("--only", choices=["facts", "playbook"], help="run one benchmark")
    ap.add_argument("--repeat", type=int, default=5, help="runs per variant of the facts benchmark (default 5)")
    ap.add_argument("--hosts", type=int, default=200, help="lab hosts in the playbook benchmark (default 200)")
    ap.add_argument("--pb-repeat", type=int, default=1, help="runs per playbook in the playbook benchmark (default 1)")
    ap.add_argument("--forks", type=int, help="forks for both playbooks (default: ansible.cfg)")
    ap.add_argument("--no-adhoc", action="store_true", help="skip the ansible ad-hoc variants of the facts benchmark")
    ap.add_argument("--no-summary", action="store_true", help="disable the vfio_summary callback in the playbook runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: --repeat 3 --hosts 20 unless given")
    ap.add_argument("--json", default=str(RESULTS), help=f"where to write the results (default {RESULTS.relative_to(REPO)})")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (sysroots, inventory, logs)")
    args = ap.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        args.repeat = args.repeat if "--repeat" in given else 3
        args.hosts = args.hosts if "--hosts" in given else 20
    if args.repeat < 1 or args.hosts < 1 or args.pb_repeat < 1:
        ap.error("--repeat, --hosts and --pb-repeat must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="vfio-bench-"))
    report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": versions(), "loadavg_start": list(os.getloadavg()), "argv": argv or sys.argv[1:]}
    try:
        # Sysroots go to a private directory so that others rebuilding lab/.sysroots cannot disturb a run.
        roots, skipped = build_sysroots(tmp / "sysroots")
        if skipped:
            print(f"note: profiles that did not build and are left out: {skipped}")
        if not roots:
            print("error: no lab profile could be built", file=sys.stderr)
            return 2
        report["profiles"] = {k: {"pci_devices": v["pci_devices"], "iommu_groups": v["iommu_groups"]} for k, v in roots.items()}
        report["skipped_profiles"] = skipped
        print(f"exliar.vfio benchmarks: {len(roots)} lab profiles, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}; ratios compare runs of this same invocation")
        if args.only in (None, "facts"):
            report["facts"] = bench_facts(roots, args, tmp)
        if args.only in (None, "playbook"):
            report["playbook"] = bench_playbook(roots, args, tmp)
    except RunFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        report["error"] = str(exc)
        return 1
    finally:
        write_report(report, args, tmp)
    return 0


def write_report(report: dict, args, tmp: Path) -> None:
    """Save the results as JSON, say where, and remove the temporary files unless --keep."""
    report["loadavg_end"] = list(os.getloadavg())
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out}" + (f"; temporary files kept in {tmp}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
