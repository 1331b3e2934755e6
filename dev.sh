#!/usr/bin/env bash
# Set-up and developer entry points. Usage: ./dev.sh demo | test | setup | lint | sanity | unit | integration | realroot | libvirt | bench | system
# Everything is installed by this script: Debian packages (with apt-get, as root or via sudo),
# a virtual environment in .venv with the pinned Python dependencies, and the
# .collections/ansible_collections/exliar/vfio link that lets Ansible load the collection from the clone.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
VENV=$HERE/.venv
# Debian packages the tiers need: lspci for the sysroot checks, pci.ids and udev (hwdb.bin)
# for device names in the lab, the ShellCheck linter for ansible-test sanity, python3-venv; cpio and the
# compressors (and lsinitramfs) that the initramfs image tests pack and compare real images with.
APT_PACKAGES=(python3-venv python3-pip pciutils pci.ids udev shellcheck git cpio zstd lz4 xz-utils bzip2 initramfs-tools-core)

log() { printf '\n== %s\n' "$*"; }

apt_install() {
    local missing=()
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The real-root tier builds Debian 12 roots with debootstrap (cached in .cache/realroot) and
# enters them with chroot in private mount namespaces (unshare, from util-linux).
realroot_setup() {
    apt_install debootstrap util-linux mount e2fsprogs dosfstools
}

# The libvirt tier defines and runs tiny guests on a real libvirtd with QEMU (TCG): the daemon and
# virsh, QEMU, OVMF for the EFI domains, busybox-static for the guest's initramfs and xmllint for
# virt-xml-validate. The guest boots a Debian kernel directly: the host's own from /boot, else
# (a container has none) the cloud kernel's package, downloaded once and unpacked in .cache/libvirt.
libvirt_setup() {
    apt_install libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 ovmf busybox-static libxml2-utils
    if ! compgen -G "/boot/vmlinuz-*" >/dev/null && ! compgen -G ".cache/libvirt/kernel/boot/vmlinuz-*" >/dev/null; then
        log "no kernel in /boot: unpacking Debian's cloud kernel into .cache/libvirt/kernel for the test guests"
        local pkg tmp
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
        tmp=$(mktemp -d)
        chown _apt "$tmp" 2>/dev/null || true  # as root, apt downloads as its own user, which must be able to write there
        (cd "$tmp" && apt-get download -qq "$pkg")
        mkdir -p .cache/libvirt/kernel
        dpkg-deb --fsys-tarfile "$tmp/$pkg"_*.deb | tar -x -C .cache/libvirt/kernel ./boot  # the kernel image, not its modules
        rm -rf "$tmp"
    fi
}

setup() {
    apt_install "${APT_PACKAGES[@]}"
    local stamp=$VENV/.requirements.sha256
    local want
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "creating the virtual environment (.venv)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -r requirements.txt
        echo "$want" > "$stamp"
    fi
    mkdir -p .collections/ansible_collections/exliar
    ln -sfn ../../.. .collections/ansible_collections/exliar/vfio
    "$VENV/bin/python" lab/build_sysroot.py --all >/dev/null
}

export PATH="$VENV/bin:$PATH"
export ANSIBLE_CONFIG="$HERE/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$HERE/.collections"

cmd=${1:-help}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        log "detecting and binding every host of the built-in lab (lab/inventory.yml)"
        rc=0
        ansible-playbook playbooks/vfio.yml "$@" || rc=$?
        if [ "$rc" = 2 ]; then  # rc 2: some hosts failed; in the lab, those are the refusals it shows on purpose
            log "done: the hosts marked FAILED above were refused on purpose (lab/inventory.yml says why); nothing was changed on them"
            rc=0
        fi
        exit "$rc"
        ;;
    lint) setup; ansible-lint --profile production --offline "$@" ;;
    sanity) setup; bash tests/ansible-test.sh sanity --python 3.11 --local "$@" ;;
    unit) setup; pytest tests/unit "$@" ;;
    integration) setup; pytest tests/integration "$@" ;;
    bench) setup; python tests/bench/run.py "$@" ;;
    system) setup; bash tests/system/run.sh "$@" ;;
    realroot) setup; realroot_setup; pytest tests/realroot -m realroot "$@" ;;
    libvirt) setup; libvirt_setup; pytest tests/libvirt -m libvirt "$@" ;;
    test)
        setup
        t0=$SECONDS
        log "unit and sysroot integration tests (pytest)"
        pytest tests/unit tests/integration "$@"
        t1=$SECONDS
        log "real-root tier: the real initramfs and bootloader tools in cached Debian 12 roots (pytest -m realroot)"
        realroot_setup
        pytest tests/realroot -m realroot
        t2=$SECONDS
        log "libvirt tier: the VM stage against a real libvirtd with QEMU (pytest -m libvirt)"
        libvirt_setup
        pytest tests/libvirt -m libvirt
        t3=$SECONDS
        log "system tier: a real kernel in QEMU guests over SSH (detect, bind, reboot), a fleet in network namespaces"
        bash tests/system/run.sh
        t4=$SECONDS
        log "ansible-lint --profile production"
        ansible-lint --profile production --offline
        log "ansible-test sanity"
        bash tests/ansible-test.sh sanity --python 3.11 --local
        t5=$SECONDS
        log "all tests passed (unit+integration $((t1 - t0)) s, real-root $((t2 - t1)) s, libvirt $((t3 - t2)) s, system $((t4 - t3)) s, lint+sanity $((t5 - t4)) s)"
        ;;
    *) sed -n '2,5p' "$0"; exit 2 ;;
esac
