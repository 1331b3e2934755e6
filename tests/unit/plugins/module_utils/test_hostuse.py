"""host_usage(): the PCI devices the host runs on (mounts, swap, the Ansible connection), and the lab's files for it."""
from __future__ import annotations

import os
import re

import pytest
from build_sysroot import ProfileError

from helpers import DESKTOP_PCI, NVME, fs_of, make_unreadable_dir, profile, remove, symlink, write

from ansible_collections.exliar.vfio.plugins.module_utils._hostuse import (
    _fib_local, connection_address, connection_interfaces, host_usage, mounted_pci_devices, parse_mountinfo,
)
from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

SATA = "0000:00:17.0"
NIC = "0000:00:1f.6"
# Just what holds disks and the NIC: building it is several times faster than the whole desktop.
PCI = [d for d in DESKTOP_PCI if d["address"] in ("0000:00:00.0", "0000:00:1d.0", NVME, NIC)] + [
    {"address": SATA, "id": "8086:a352", "class": "010601", "driver": "ahci", "group": 6, "block": ["sda"]}]
ROOT_ON_NVME = [{"block": "nvme0n1p2", "mountpoint": "/", "fstype": "ext4"},
                {"block": "nvme0n1p1", "mountpoint": "/boot/efi", "fstype": "vfat"}]
NETWORK = {"eno1": ["192.168.1.20/24", "fe80::211:22ff:fe33:4455/64", "2001:db8:1::20/64"]}


def usage_of(make_sysroot, address=None, **sections):
    root = make_sysroot(pci=PCI, **sections)
    fs = fs_of(root)
    return host_usage(fs, address), fs


# ---- mounts and swap ------------------------------------------------------------------------

def test_root_on_an_nvme_partition(make_sysroot):
    usage, fs = usage_of(make_sysroot, mounts=ROOT_ON_NVME)
    assert usage["in_use"] == {NVME: [
        {"kind": "mount", "block": "nvme0n1p2", "detail": "/ (ext4)"},
        {"kind": "mount", "block": "nvme0n1p1", "detail": "/boot/efi (vfat)"},
    ]}
    assert usage["connection"] == {"address": None, "interfaces": [], "pci_addresses": []}
    assert fs.warnings == []


def test_swap_on_sata(make_sysroot):
    usage, fs = usage_of(make_sysroot, mounts=ROOT_ON_NVME[:1], swaps=["sda3"])
    assert usage["in_use"][SATA] == [{"kind": "swap", "block": "sda3", "detail": "swap /dev/sda3"}]
    assert [e["block"] for e in usage["in_use"][NVME]] == ["nvme0n1p2"]
    assert fs.warnings == []


def test_lvm_over_a_partition_makes_the_controller_in_use(make_sysroot):
    mounts = ROOT_ON_NVME[:1] + [{"block": "dm-0", "name": "vg0-home", "mountpoint": "/home", "fstype": "xfs",
                                  "slaves": ["nvme0n1p3"]}]
    usage, fs = usage_of(make_sysroot, mounts=mounts)
    assert {"kind": "mount", "block": "nvme0n1p3", "detail": "/home (xfs) via dm-0"} in usage["in_use"][NVME]
    assert fs.warnings == []


def test_lvm_on_luks_on_sata_and_swap_on_lvm(make_sysroot):
    luks = {"block": "dm-0", "name": "luks-0c6d", "slaves": ["sda2"]}
    mounts = [{"block": "dm-1", "name": "vg0-root", "mountpoint": "/", "fstype": "ext4", "slaves": [luks]}]
    swaps = [{"block": "dm-2", "name": "vg0-swap", "slaves": ["dm-0"]}]
    usage, fs = usage_of(make_sysroot, mounts=mounts, swaps=swaps)
    assert usage["in_use"] == {SATA: [{"kind": "mount", "block": "sda2", "detail": "/ (ext4) via dm-1"},
                                      {"kind": "swap", "block": "sda2", "detail": "swap /dev/dm-2"}]}
    assert fs.warnings == []


def test_md_raid1_over_two_controllers(make_sysroot):
    mounts = [{"block": "md0", "mountpoint": "/", "fstype": "ext4", "slaves": ["nvme0n1p2", "sda2"]}]
    usage, _fs = usage_of(make_sysroot, mounts=mounts)
    assert usage["in_use"] == {NVME: [{"kind": "mount", "block": "nvme0n1p2", "detail": "/ (ext4) via md0"}],
                               SATA: [{"kind": "mount", "block": "sda2", "detail": "/ (ext4) via md0"}]}


def test_btrfs_anonymous_device_number_is_resolved_by_its_source(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=[{"block": "nvme0n1p2", "mountpoint": "/", "fstype": "btrfs"}])
    line = next(m for m in parse_mountinfo((root / "proc/self/mountinfo").read_text()) if m["mountpoint"] == "/")
    assert line["devnum"][0] == 0 and line["source"] == "/dev/nvme0n1p2"
    fs = fs_of(root)
    assert mounted_pci_devices(fs) == {NVME: [{"kind": "mount", "block": "nvme0n1p2", "detail": "/ (btrfs)"}]}
    # a second device of the same btrfs counts too, though mountinfo names only one
    fsid = next(iter(os.listdir(root / "sys/fs/btrfs")))
    symlink(root, f"sys/fs/btrfs/{fsid}/devices/sda", "../../../../class/block/sda")
    assert SATA in mounted_pci_devices(fs_of(root))


def test_multi_device_source_of_an_anonymous_device_number(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=[])
    write(root, "proc/self/mountinfo", "30 1 0:40 / / rw shared:1 - bcachefs /dev/nvme0n1:/dev/sda rw\n"
                                       "31 30 0:41 / /dev/fuse-thing rw shared:2 - fuse /dev/fuse rw\n")
    fs = fs_of(root)
    assert mounted_pci_devices(fs) == {NVME: [{"kind": "mount", "block": "nvme0n1", "detail": "/ (bcachefs)"}],
                                       SATA: [{"kind": "mount", "block": "sda", "detail": "/ (bcachefs)"}]}
    assert fs.warnings == []


def test_virtual_filesystems_are_ignored(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=[])
    text = (root / "proc/self/mountinfo").read_text()
    assert {m["fstype"] for m in parse_mountinfo(text)} >= {"proc", "sysfs", "tmpfs", "devtmpfs"}
    write(root, "proc/self/mountinfo", text + "40 26 0:45 / /mnt/ram rw,relatime shared:40 - tmpfs tmpfs rw\n"
                                              "41 26 0:46 / /srv/nfs rw shared:41 - nfs4 nas:/export rw\n")
    fs = fs_of(root)
    assert host_usage(fs)["in_use"] == {}
    assert fs.warnings == []


def test_mount_points_with_spaces_and_optional_fields(tmp_path):
    write(tmp_path, "proc/self/mountinfo",
          "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:3 - ext3 /dev/root rw,errors=continue\n"
          "37 35 0:12 / /x rw - tmpfs tmpfs rw\n"
          "garbage line\n")
    assert parse_mountinfo((tmp_path / "proc/self/mountinfo").read_text()) == [
        {"devnum": (98, 0), "mountpoint": "/mnt/my disk", "fstype": "ext3", "source": "/dev/root"},
        {"devnum": (0, 12), "mountpoint": "/x", "fstype": "tmpfs", "source": "tmpfs"},
    ]


def test_proc_mounts_fallback_resolves_names_and_dm_names(make_sysroot):
    mounts = ROOT_ON_NVME[:1] + [{"block": "dm-0", "name": "vg0-home", "mountpoint": "/home", "fstype": "xfs",
                                  "slaves": ["sda2"]}]
    root = make_sysroot(pci=PCI, mounts=mounts)
    remove(root, "proc/self/mountinfo")
    fs = fs_of(root)
    in_use = mounted_pci_devices(fs)
    assert in_use[NVME] == [{"kind": "mount", "block": "nvme0n1p2", "detail": "/ (ext4)"}]
    assert in_use[SATA] == [{"kind": "mount", "block": "sda2", "detail": "/home (xfs) via dm-0"}]
    assert any("proc/self/mountinfo" in w for w in fs.warnings)


def test_native_multipath_nvme_counts_for_every_controller(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=ROOT_ON_NVME[:1])
    # the namespace head lives below the subsystem, which links to its controllers
    subsys = "sys/devices/virtual/nvme-subsystem/nvme-subsys0"
    real = (root / "sys/class/block/nvme0n1").resolve()
    os.makedirs(root / subsys)
    os.rename(real, root / subsys / "nvme0n1")
    symlink(root, f"{subsys}/nvme0", os.path.relpath(real.parent, root / subsys))
    symlink(root, "sys/class/block/nvme0n1", f"../../{subsys[4:]}/nvme0n1")
    symlink(root, "sys/class/block/nvme0n1p2", f"../../{subsys[4:]}/nvme0n1/nvme0n1p2")
    symlink(root, "sys/dev/block/259:1", f"../../{subsys[4:]}/nvme0n1/nvme0n1p2")
    fs = fs_of(root)
    assert mounted_pci_devices(fs) == {NVME: [{"kind": "mount", "block": "nvme0n1p2", "detail": "/ (ext4)"}]}


def test_device_number_missing_from_sysfs_is_a_warning(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=ROOT_ON_NVME[:1])
    remove(root, "sys/dev/block/259:1")
    fs = fs_of(root)
    assert mounted_pci_devices(fs) == {}
    assert any("259:1" in w and "mount /" in w for w in fs.warnings)


def test_zfs_pool_is_a_warning_once(tmp_path):
    write(tmp_path, "proc/self/mountinfo", "30 1 0:40 / / rw shared:1 - zfs rpool/ROOT/pve-1 rw,xattr,noacl\n"
                                           "31 30 0:41 / /rpool rw shared:2 - zfs rpool rw,xattr,noacl\n")
    write(tmp_path, "proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
    fs = fs_of(tmp_path)
    assert mounted_pci_devices(fs) == {}
    assert [w for w in fs.warnings if "zfs" in w] == [
        "zfs pool rpool is mounted; its disks are not visible in sysfs, so the PCI devices holding it are unknown"]


def test_swap_file_is_not_a_device(tmp_path):
    write(tmp_path, "proc/self/mountinfo", "")
    write(tmp_path, "proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                                  "/swapfile                               file\t\t2097148\t\t0\t\t-2\n")
    fs = fs_of(tmp_path)
    assert mounted_pci_devices(fs) == {}
    assert fs.warnings == []


def test_missing_proc_files_are_warnings_not_exceptions(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=ROOT_ON_NVME, network=NETWORK)
    for rel in ("proc/self/mountinfo", "proc/mounts", "proc/swaps", "proc/net/fib_trie", "proc/net/if_inet6"):
        remove(root, rel)
    fs = fs_of(root)
    usage = host_usage(fs, "192.168.1.20")
    assert usage["in_use"] == {}
    assert usage["connection"] == {"address": "192.168.1.20", "interfaces": [], "pci_addresses": []}
    for rel in ("proc/mounts", "proc/swaps", "proc/net/fib_trie"):
        assert f"{rel}: missing" in fs.warnings
    assert host_usage(fs, "2001:db8:1::20")["connection"]["interfaces"] == []
    assert "proc/net/if_inet6: missing" in fs.warnings


def test_unreadable_proc_files_are_warnings(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=ROOT_ON_NVME, network=NETWORK)
    for rel in ("proc/self/mountinfo", "proc/mounts", "proc/swaps", "proc/net/route"):
        make_unreadable_dir(root, rel)
    fs = fs_of(root)
    usage = host_usage(fs, "192.168.1.20")
    assert usage["in_use"] == {}
    assert any(w.startswith("proc/net/route: cannot read") for w in fs.warnings)
    assert any(w.startswith("proc/mounts: cannot read") for w in fs.warnings)


def test_a_root_that_does_not_exist(tmp_path):
    fs = RootFS(str(tmp_path / "nothing"))
    usage = host_usage(fs, "10.0.0.1")
    assert usage["in_use"] == {} and usage["connection"]["interfaces"] == []
    assert fs.warnings


# ---- the connection ---------------------------------------------------------------------------

@pytest.mark.parametrize("address,shown", [
    ("192.168.1.20", "192.168.1.20"),
    ("::ffff:192.168.1.20", "192.168.1.20"),     # a dual-stack socket's view of an IPv4 client
    ("2001:db8:1::20", "2001:db8:1::20"),
    ("fe80::211:22ff:fe33:4455%eno1", "fe80::211:22ff:fe33:4455"),
    ("2001:DB8:1:0::20", "2001:db8:1::20"),
])
def test_connection_address_to_interface_to_pci(make_sysroot, address, shown):
    usage, fs = usage_of(make_sysroot, address, mounts=ROOT_ON_NVME, network=NETWORK)
    assert usage["connection"] == {"address": shown, "interfaces": ["eno1"], "pci_addresses": [NIC]}
    assert usage["in_use"][NIC] == [{"kind": "connection", "interface": "eno1",
                                     "detail": f"carries the Ansible connection to {shown}"}]
    assert NVME in usage["in_use"]
    assert fs.warnings == []


def test_longest_prefix_wins_over_the_default_route(make_sysroot):
    network = {"eno1": ["192.168.1.20/24"], "wg0": ["10.8.0.1/24"]}
    root = make_sysroot(pci=PCI, network=network)
    assert connection_interfaces(fs_of(root), "10.8.0.1") == ["wg0"]
    assert connection_interfaces(fs_of(root), "192.168.1.20") == ["eno1"]


def test_virtual_interface_has_no_pci_device(make_sysroot):
    usage, fs = usage_of(make_sysroot, "10.8.0.1", network={"eno1": ["192.168.1.20/24"], "wg0": ["10.8.0.1/24"]})
    assert usage["connection"] == {"address": "10.8.0.1", "interfaces": ["wg0"], "pci_addresses": []}
    assert usage["in_use"] == {}
    assert fs.warnings == []


def test_bridge_stands_on_its_pci_port(make_sysroot):
    network = {"br0": {"addresses": ["192.168.1.20/24", "fe80::1/64"], "lower": ["eno1"]}}
    usage, fs = usage_of(make_sysroot, "192.168.1.20", network=network)
    assert usage["connection"] == {"address": "192.168.1.20", "interfaces": ["br0"], "pci_addresses": [NIC]}
    assert usage["in_use"][NIC][0]["interface"] == "br0"
    assert connection_interfaces(fs, "fe80::1") == ["br0"]


def test_loopback_connection(make_sysroot):
    usage, fs = usage_of(make_sysroot, "127.0.0.1", network=NETWORK)
    assert usage["connection"] == {"address": "127.0.0.1", "interfaces": ["lo"], "pci_addresses": []}
    assert fs.warnings == []


@pytest.mark.parametrize("address", ["192.168.1.99", "8.8.8.8", "2001:db8:1::99"])
def test_unknown_address_is_a_warning(make_sysroot, address):
    usage, fs = usage_of(make_sysroot, address, network=NETWORK)
    assert usage["connection"] == {"address": address, "interfaces": [], "pci_addresses": []}
    assert usage["in_use"] == {}
    assert any(address in w and "not an address of this host" in w for w in fs.warnings)


@pytest.mark.parametrize("address", ["not-an-ip", "300.1.1.1", "192.168.1"])
def test_invalid_address_is_a_warning(make_sysroot, address):
    usage, fs = usage_of(make_sysroot, address, network=NETWORK)
    assert usage["connection"] == {"address": address, "interfaces": [], "pci_addresses": []}
    assert any("not an IP address" in w for w in fs.warnings)


@pytest.mark.parametrize("environ,address", [
    ({"SSH_CONNECTION": "192.168.1.5 51234 192.168.1.20 22"}, "192.168.1.20"),
    ({"SSH_CONNECTION": "2001:db8::5 51234 2001:db8::20 22"}, "2001:db8::20"),
    ({"SSH_CONNECTION": "fe80::5%eno1 51234 fe80::20%eno1 2222"}, "fe80::20%eno1"),
    ({}, None),
    ({"SSH_CONNECTION": ""}, None),
    ({"SSH_CONNECTION": "garbage"}, None),
    ({"SSH_CLIENT": "192.168.1.5 51234 22"}, None),
])
def test_ssh_connection_parsing(environ, address):
    assert connection_address(environ) == address


def test_devices_limit_in_use(make_sysroot):
    root = make_sysroot(pci=PCI, mounts=ROOT_ON_NVME[:1], swaps=["sda3"], network=NETWORK)
    usage = host_usage(fs_of(root), "192.168.1.20", devices=[SATA])
    assert list(usage["in_use"]) == [SATA]
    assert usage["connection"]["pci_addresses"] == [NIC]


# ---- the lab's files are the kernel's ----------------------------------------------------------

def test_block_device_numbers_are_unique_and_consistent(make_sysroot):
    pci = PCI + [{"address": "0000:00:1b.0", "id": "8086:a340", "class": "060400", "driver": "pcieport", "group": 7},
                 {"address": "0000:03:00.0", "id": "144d:a808", "class": "010802", "parent": "0000:00:1b.0",
                  "driver": "nvme", "group": 7, "block": ["nvme1n1"]}]
    root = make_sysroot(pci=pci, mounts=ROOT_ON_NVME + [{"block": "nvme1n1p1", "mountpoint": "/data"}],
                        swaps=["sda3"])
    seen = {}
    for name in sorted(os.listdir(root / "sys/class/block")):
        devnum = (root / "sys/class/block" / name / "dev").read_text().strip()
        assert devnum not in seen, (name, seen.get(devnum))
        seen[devnum] = name
        assert os.path.realpath(root / "sys/dev/block" / devnum) == os.path.realpath(root / "sys/class/block" / name)
    assert seen == {"259:0": "nvme0n1", "259:1": "nvme0n1p1", "259:2": "nvme0n1p2", "259:3": "nvme1n1",
                    "259:4": "nvme1n1p1", "8:0": "sda", "8:3": "sda3"}
    assert sorted(os.listdir(root / "sys/block")) == ["nvme0n1", "nvme1n1", "sda"]  # no partitions there
    assert os.readlink(root / "sys/dev/block/259:2") == (
        "../../devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p2")
    assert (root / "sys/class/block/nvme0n1p2/partition").read_text() == "2\n"


def test_mount_tables_as_the_kernel_writes_them(make_sysroot):
    mounts = ROOT_ON_NVME + [{"block": "dm-0", "name": "vg0-home", "mountpoint": "/home", "fstype": "xfs",
                              "slaves": ["nvme0n1p3"]}]
    root = make_sysroot(pci=PCI, mounts=mounts, swaps=["sda3"])
    info = (root / "proc/self/mountinfo").read_text().splitlines()
    line = re.compile(r"^\d+ \d+ \d+:\d+ / \S+ \S+ (shared:\d+ )*- \S+ \S+ \S+$")
    assert all(line.match(x) for x in info), info
    root_line = next(x for x in info if x.split()[4] == "/")
    assert root_line.split()[1] == "1" and root_line.split()[2] == "259:2"
    ids = {x.split()[4]: x.split()[0] for x in info}
    assert all(x.split()[1] == ids["/"] for x in info if x.split()[4] in ("/home", "/sys", "/proc"))
    assert "/dev/mapper/vg0-home /home xfs rw,relatime,attr2" in (root / "proc/mounts").read_text()
    assert os.readlink(root / "sys/devices/virtual/block/dm-0/slaves/nvme0n1p3").endswith("/nvme0n1/nvme0n1p3")
    assert (root / "sys/class/block/dm-0/dm/name").read_text() == "vg0-home\n"
    swaps = (root / "proc/swaps").read_text().splitlines()
    assert swaps[0] == "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"
    assert swaps[1] == "/dev/sda3" + " " * 31 + "partition\t8388604\t\t0\t\t-2"


def test_network_files_as_the_kernel_writes_them(make_sysroot):
    root = make_sysroot(pci=PCI, network=NETWORK)
    route = (root / "proc/net/route").read_text().splitlines()
    assert route[0].startswith("Iface\tDestination\tGateway \tFlags") and len(route[0]) == 127
    assert route[1].split() == ["eno1", "00000000", "0101A8C0", "0003", "0", "0", "100", "00000000", "0", "0", "0"]
    assert route[2].split() == ["eno1", "0001A8C0", "00000000", "0001", "0", "0", "100", "00FFFFFF", "0", "0", "0"]
    trie = (root / "proc/net/fib_trie").read_text()
    assert trie.startswith("Main:\n  +-- 0.0.0.0/0 ") and "\nLocal:\n  +-- 0.0.0.0/0 " in trie
    assert "  |-- 192.168.1.20\n" in trie and "/32 host LOCAL\n" in trie
    assert {str(n) for n in _fib_local(trie)} == {"127.0.0.0/8", "127.0.0.1/32", "192.168.1.20/32"}
    inet6 = (root / "proc/net/if_inet6").read_text().splitlines()
    assert "fe80000000000000021122fffe334455 02 40 20 80     eno1" in inet6
    assert "00000000000000000000000000000001 01 80 10 80       lo" in inet6
    assert os.readlink(root / "sys/class/net/lo") == "../../devices/virtual/net/lo"


def test_fib_trie_parser_reads_a_real_listing():
    # `cat /proc/net/fib_trie` of a Debian 12 VM (kernel 6.1), one table shown
    text = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.168.122.0/24 2 0 2
        +-- 192.168.122.0/28 2 0 2
           |-- 192.168.122.0
              /24 link UNICAST
           |-- 192.168.122.140
              /32 host LOCAL
        |-- 192.168.122.255
           /32 link BROADCAST
"""
    assert {str(n) for n in _fib_local(text)} == {"127.0.0.0/8", "127.0.0.1/32", "192.168.122.140/32"}


@pytest.mark.parametrize("sections,message", [
    ({"mounts": [{"block": "nvme5n1p2", "mountpoint": "/"}]}, "neither a disk"),
    ({"mounts": [{"block": "dm-0", "mountpoint": "/"}]}, "not defined"),
    ({"mounts": [{"block": "nvme0n1p2", "mountpoint": "/", "slaves": ["sda1"]}]}, "only dm-N and mdN"),
    ({"mounts": [{"block": "nvme0n1p2", "mountpoint": "relative"}]}, "absolute mountpoint"),
    ({"swaps": [{"block": "dm-1", "slaves": ["dm-0"]}]}, "not defined"),
    ({"network": {"eno1": ["192.168.1.20"]}}, "with its prefix"),
    ({"network": {"br0": {"addresses": [], "lower": ["eth9"]}}}, "does not exist"),
])
def test_profile_errors(make_sysroot, sections, message):
    with pytest.raises(ProfileError, match=message):
        make_sysroot(profile(pci=PCI, **sections))


# ---- the machine running the tests ------------------------------------------------------------

def test_mountinfo_parser_agrees_with_stat_on_this_machine():
    """Field 3 of mountinfo is st_dev of the files on that mount (proc(5)): check it on the real "/"."""
    text = RootFS("/").read_text("proc/self/mountinfo")
    if text is None:
        pytest.skip("no /proc/self/mountinfo here")
    visible = [m for m in parse_mountinfo(text) if m["mountpoint"] == "/"]
    assert visible, "mountinfo lists no mount on /"
    st = os.stat("/")
    assert visible[-1]["devnum"] == (os.major(st.st_dev), os.minor(st.st_dev))
    # and the whole pass never raises on a real host
    fs = RootFS("/")
    assert isinstance(mounted_pci_devices(fs), dict)
