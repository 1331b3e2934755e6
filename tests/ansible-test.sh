#!/usr/bin/env bash
# Run ansible-test on a copy of the collection laid out as ansible_collections/exliar/vfio
# (ansible-test insists on that path; a clone can live anywhere), offline.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
# ansible-test bootstraps pip in each sanity venv with a script from a server that is not
# reachable offline; put a stand-in where it looks first.
gp="$HOME/.ansible/test/cache/get_pip_24_2.py"
if ! cmp -s "$src/tests/get_pip_standin.py" "$gp" 2>/dev/null; then
    mkdir -p "$(dirname "$gp")"
    cp "$src/tests/get_pip_standin.py" "$gp"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dst="$work/ansible_collections/exliar/vfio"
mkdir -p "$dst"
tar -C "$src" --exclude=./.collections --exclude=./.venv --exclude=./.git --exclude=./.cache \
    --exclude=./tests/output --exclude=./lab/.sysroots --exclude='__pycache__' -cf - . | tar -C "$dst" -xf -
cd "$dst"
status=0
ansible-test "$@" || status=$?
if [ -d tests/output ]; then
    mkdir -p "$src/tests/output"
    cp -a tests/output/. "$src/tests/output/"
fi
exit $status
