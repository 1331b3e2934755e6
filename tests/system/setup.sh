#!/usr/bin/env bash
# Host packages for the system test tier (tests/system): QEMU with OVMF to boot a Debian guest under
# an emulated Intel IOMMU, debootstrap and the image tools to build that guest without loop devices
# or mounts, and OpenSSH + iproute2 for the SSH fleet in network namespaces.
# Idempotent: asks dpkg first and calls apt-get only for what is missing. Run as root or with sudo.
set -euo pipefail

PACKAGES=(
    qemu-system-x86 qemu-utils ovmf            # the VM: q35 + intel-iommu under TCG, UEFI firmware
    debootstrap debian-archive-keyring         # the guest's root filesystem
    mtools dosfstools fdisk e2fsprogs          # ESP (FAT32 via mtools) and ext4 (mke2fs -d) in a GPT image
    grub-efi-amd64-bin                         # grub-mkstandalone for the first boot
    cpio zstd kmod                             # initramfs inspection, depmod
    openssh-client openssh-server              # ssh into the guest; sshd per network namespace
    iproute2 procps pciutils                   # ip netns / veth; ps; lspci
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
printf '== installing Debian packages for the system tier: %s\n' "${missing[*]}"
"${sudo[@]}" apt-get update -qq
# openssh-server is only needed for its sshd binary: the fleet test starts its own, one per network namespace.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
