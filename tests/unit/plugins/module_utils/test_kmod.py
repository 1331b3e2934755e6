"""Are the vfio modules there (module, built in, missing) for every installed kernel."""
from __future__ import annotations

import pytest

from helpers import fs_of, remove, write

from ansible_collections.exliar.vfio.plugins.module_utils._kmod import vfio_readiness

ALL_MODULE = {"vfio": "module", "vfio_pci": "module", "vfio_iommu_type1": "module", "vfio_virqfd": "module"}
NO_VIRQFD = {"vfio": "module", "vfio_pci": "module", "vfio_iommu_type1": "module"}


def readiness(root, kernels=None):
    fs = fs_of(root)
    if kernels is None:
        from ansible_collections.exliar.vfio.plugins.module_utils._system import installed_kernels

        kernels = installed_kernels(fs)
    return vfio_readiness(fs, kernels), fs


def test_debian_12_kernel_has_every_module(make_sysroot):
    r, fs = readiness(make_sysroot(pci=[]))
    k = r["kernels"]["6.1.0-18-amd64"]
    assert k["modules"] == ALL_MODULE
    assert k["ready"] is True and k["builtin"] == []
    assert r["ready"] is True
    assert fs.warnings == []


@pytest.mark.parametrize("kernel,virqfd", [
    ("5.15.0-91-generic", True),
    ("6.1.0-18-amd64", True),
    ("6.2.0-39-generic", False),
    ("6.8.0-45-generic", False),
    ("6.10.3-arch1-1", False),  # 6.10 is after 6.2, not before it
])
def test_vfio_virqfd_is_only_wanted_before_6_2(make_sysroot, kernel, virqfd):
    r, _fs = readiness(make_sysroot(pci=[], os={"kernel": kernel}))
    mods = r["kernels"][kernel]["modules"]
    assert ("vfio_virqfd" in mods) is virqfd
    assert mods == (ALL_MODULE if virqfd else NO_VIRQFD)
    assert r["ready"] is True


def test_virqfd_missing_on_an_old_kernel(make_sysroot):
    root = make_sysroot(pci=[], os={"kernel": "5.15.0-91-generic", "missing_modules": ["vfio_virqfd"]})
    r, _fs = readiness(root)
    assert r["kernels"]["5.15.0-91-generic"]["modules"]["vfio_virqfd"] == "missing"
    assert r["ready"] is False


def test_built_in_modules(make_sysroot):
    # Arch, Fedora and others build vfio into the kernel
    root = make_sysroot(pci=[], os={"kernel": "6.10.3-arch1-1",
                                    "builtin_modules": ["vfio", "vfio_iommu_type1", "vfio_pci"]})
    r, _fs = readiness(root)
    k = r["kernels"]["6.10.3-arch1-1"]
    assert k["modules"] == {"vfio": "builtin", "vfio_pci": "builtin", "vfio_iommu_type1": "builtin"}
    assert k["builtin"] == ["vfio", "vfio_iommu_type1", "vfio_pci"]
    assert k["ready"] is True


def test_partly_built_in(make_sysroot):
    root = make_sysroot(pci=[], os={"kernel": "6.8.0-45-generic", "builtin_modules": ["vfio", "vfio_iommu_type1"]})
    k, _fs = readiness(root)
    k = k["kernels"]["6.8.0-45-generic"]
    assert k["modules"] == {"vfio": "builtin", "vfio_pci": "module", "vfio_iommu_type1": "builtin"}
    assert k["ready"] is True


def test_missing_module(make_sysroot):
    root = make_sysroot(pci=[], os={"missing_modules": ["vfio_pci"]})
    r, _fs = readiness(root)
    k = r["kernels"]["6.1.0-18-amd64"]
    assert k["modules"]["vfio_pci"] == "missing"
    assert k["ready"] is False and r["ready"] is False


@pytest.mark.parametrize("ext", [".ko.zst", ".ko.xz", ".ko.gz"])
def test_compressed_modules(make_sysroot, ext):
    r, _fs = readiness(make_sysroot(pci=[], os={"kernel": "6.8.0-45-generic", "module_ext": ext}))
    assert r["kernels"]["6.8.0-45-generic"]["modules"] == NO_VIRQFD


@pytest.mark.parametrize("ext", [".ko", ".ko.xz"])
def test_without_modules_dep_the_files_are_looked_for(make_sysroot, ext):
    root = make_sysroot(pci=[], os={"module_ext": ext})
    remove(root, "usr/lib/modules/6.1.0-18-amd64/modules.dep")
    r, fs = readiness(root, ["6.1.0-18-amd64"])
    assert r["kernels"]["6.1.0-18-amd64"]["modules"] == ALL_MODULE  # vfio-pci.ko* -> vfio_pci
    assert any("modules.dep" in w for w in fs.warnings)


def test_several_kernels_one_not_ready(make_sysroot):
    root = make_sysroot(pci=[], os={"kernel": "6.8.0-45-generic", "kernels": ["6.5.0-14-generic", "6.8.0-45-generic"]})
    dep = root / "usr/lib/modules/6.5.0-14-generic/modules.dep"
    dep.write_text("".join(line + "\n" for line in dep.read_text().splitlines() if "vfio_iommu_type1" not in line))
    r, _fs = readiness(root)
    assert r["kernels"]["6.8.0-45-generic"]["ready"] is True
    assert r["kernels"]["6.5.0-14-generic"]["ready"] is False
    assert r["kernels"]["6.5.0-14-generic"]["modules"]["vfio_iommu_type1"] == "missing"
    assert r["ready"] is False


def test_kernels_split_between_lib_and_usr_lib(tmp_path):
    write(tmp_path, "lib/modules/5.10.0-28-amd64/modules.dep",
          "kernel/drivers/vfio/vfio.ko:\nkernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\n"
          "kernel/drivers/vfio/vfio_iommu_type1.ko:\nkernel/drivers/vfio/vfio_virqfd.ko:\n")
    write(tmp_path, "usr/lib/modules/6.1.0-18-amd64/modules.dep", "kernel/drivers/vfio/vfio.ko:\n")
    r, _fs = readiness(tmp_path)
    assert r["kernels"]["5.10.0-28-amd64"]["ready"] is True
    assert r["kernels"]["6.1.0-18-amd64"]["modules"] == {"vfio": "module", "vfio_pci": "missing",
                                                         "vfio_iommu_type1": "missing", "vfio_virqfd": "missing"}


def test_kernel_without_a_modules_directory(tmp_path):
    r, _fs = readiness(tmp_path, ["6.1.0-18-amd64"])
    assert r["kernels"]["6.1.0-18-amd64"]["ready"] is False
    assert set(r["kernels"]["6.1.0-18-amd64"]["modules"].values()) == {"missing"}
    assert r["ready"] is False


def test_no_kernel_is_not_ready(tmp_path):
    r, _fs = readiness(tmp_path, [])
    assert r == {"kernels": {}, "loaded": [], "ready": False}


def test_loaded_modules(make_sysroot):
    root = make_sysroot(pci=[], os={"loaded_modules": ["vfio", "vfio_pci", "vfio_iommu_type1", "kvm"]})
    r, _fs = readiness(root)
    assert r["loaded"] == ["vfio", "vfio_pci", "vfio_iommu_type1"]


def test_bound_vfio_pci_driver_means_loaded(make_sysroot):
    pci = [{"address": "0000:00:01.0", "id": "8086:1901", "class": "060400", "driver": "pcieport", "group": 1},
           {"address": "0000:01:00.0", "id": "10de:1e87", "class": "030000", "parent": "0000:00:01.0",
            "driver": "vfio-pci", "group": 1}]
    r, _fs = readiness(make_sysroot(pci=pci))
    assert "vfio_pci" in r["loaded"]
