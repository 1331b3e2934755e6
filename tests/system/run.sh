#!/usr/bin/env bash
# System tier: host packages (setup.sh), then pytest over tests/system -m system:
#   - test_vm_detect.py: a Debian 12 guest (image built once, cached in .cache/vm/) booted under QEMU
#     in every layout of tests/system/layouts/, the real playbook run into it over SSH;
#   - test_fleet_ssh.py: sshd in network namespaces serving lab sysroots, one unreachable host.
# Usage: tests/system/run.sh [pytest args...]   (needs root; artifacts of failures: tests/output/system/)
set -euo pipefail
cd "$(dirname "$0")/../.."

secs() { date +%s.%N; }
dur() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(secs)
bash tests/system/setup.sh
t1=$(secs)
printf '== system tier: host packages (setup.sh) %s s\n' "$(dur "$t0" "$t1")"

if [ ! -x .venv/bin/pytest ]; then
    ./dev.sh setup
fi
rm -f tests/output/system/timings.json
rc=0
# -s: the harness logs its progress (image build, boots, SSH) live to stderr
.venv/bin/pytest tests/system -m system -v -s "$@" || rc=$?
t2=$(secs)

printf '\n== system tier durations\n'
printf '%-44s %8s\n' "host packages (setup.sh)" "$(dur "$t0" "$t1")"
if [ -f tests/output/system/timings.json ]; then
    .venv/bin/python - <<'PY'
import json
t = json.load(open("tests/output/system/timings.json"))
tiers = {}
for name, s in t.items():
    tier = "fleet over SSH (network namespaces)" if name.startswith("fleet") else \
        "guest image" if name.startswith("guest image") else "VM: " + name.split(":")[0]
    if name.startswith("fleet") or name.startswith("guest image") or "total" in name:
        tiers[tier] = tiers.get(tier, 0) + s
for tier, s in tiers.items():
    print(f"{tier:<44} {s:8.1f}")
PY
fi
printf '%-44s %8s\n' "pytest tests/system -m system (all)" "$(dur "$t1" "$t2")"
exit "$rc"
