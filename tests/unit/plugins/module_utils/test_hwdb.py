"""hwdb.bin lookups agree with systemd's own reader on the real database."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils._hwdb import Hwdb, HwdbError, lookup_names
from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

REAL = next((p for p in (Path("/etc/udev/hwdb.bin"), Path("/usr/lib/udev/hwdb.bin")) if p.exists()), None)
needs_real = pytest.mark.skipif(REAL is None or shutil.which("systemd-hwdb") is None,
                                reason="udev's hwdb.bin and systemd-hwdb (./dev.sh setup installs udev)")
QUERIES = [
    "pci:v000010DEd00001E87",       # NVIDIA TU104
    "pci:v00008086d00003E98",       # Intel UHD 630
    "pci:v00001002d0000687F",       # AMD Vega 10
    "pci:v00001A03d00002000",       # ASPEED BMC graphics
    "pci:v000010DEd00001E87sv00001462sd00003721bc03sc00i00",  # a full modalias
    "pci:v0000FFFFd0000FFFF",       # no model entry
    "usb:v046Dp0A87",               # another bus in the same database
]


def systemd_says(query: str) -> dict:
    out = subprocess.run(["systemd-hwdb", "query", query], capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@needs_real
@pytest.mark.parametrize("query", QUERIES)
def test_lookup_matches_systemd_hwdb_query(query):
    db = Hwdb(REAL.read_bytes())
    assert db.lookup(query) == systemd_says(query)


@needs_real
def test_names_for_pci_ids(tmp_path):
    dst = tmp_path / "usr/lib/udev/hwdb.bin"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(REAL, dst)
    names = lookup_names(RootFS(str(tmp_path)), [("10de", "1e87"), ("1234", "0000")])
    assert names[("10de", "1e87")] == ("NVIDIA Corporation", "TU104 [GeForce RTX 2080 Rev. A]")
    assert names[("1234", "0000")][1] is None


def test_a_file_that_is_not_hwdb_is_a_warning(tmp_path):
    dst = tmp_path / "usr/lib/udev/hwdb.bin"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"not a database")
    fs = RootFS(str(tmp_path))
    assert lookup_names(fs, [("10de", "1e87")]) == {}
    assert fs.warnings and "hwdb.bin" in fs.warnings[0]
    with pytest.raises(HwdbError):
        Hwdb(b"KSLPHHRH" + b"\0" * 10)


@needs_real
@pytest.mark.parametrize("vendor,device", [("10de", "1e87"), ("8086", "3e98"), ("1002", "687f"), ("1a03", "2000"),
                                           ("1022", "14d8"), ("ffff", "ffff")])
def test_exact_name_lookup_agrees_with_the_full_match(vendor, device):
    db = Hwdb(REAL.read_bytes())
    full = db.lookup(f"pci:v0000{vendor.upper()}d0000{device.upper()}")
    assert db.exact(f"pci:v0000{vendor.upper()}*").get("ID_VENDOR_FROM_DATABASE") == full.get("ID_VENDOR_FROM_DATABASE")
    assert db.exact(f"pci:v0000{vendor.upper()}d0000{device.upper()}*").get("ID_MODEL_FROM_DATABASE") \
        == full.get("ID_MODEL_FROM_DATABASE")
