"""VM specs: strict validation with messages that say what to write, and the rendered domain XML."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_domain as domain

OVMF = {"loader": "/usr/share/OVMF/OVMF_CODE_4M.fd", "nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}


def spec(**over):
    base = {"name": "win11", "memory_mib": 4096, "vcpus": 4}
    base.update(over)
    return base


def problems(**over) -> str:
    with pytest.raises(domain.SpecError) as exc:
        domain.validate(spec(**over))
    return str(exc.value)


def rendered(domain_type="kvm", ovmf="debian", uuid=None, **over):
    vm = domain.validate(spec(**over))
    out = domain.render(vm, domain_type, OVMF if ovmf == "debian" else ovmf, uuid=uuid)
    return out, ET.fromstring(out["xml"])


# --------------------------------------------------------------------------- validation


def test_defaults_are_filled_in():
    vm = domain.validate(spec())
    assert vm["firmware"] == "efi" and vm["machine"] == "q35" and vm["domain_type"] == "auto"
    assert vm["start"] is False and vm["wait"] is False and vm["wait_timeout"] == 600
    assert vm["disks"] == [] and vm["devices"] == [] and vm["kernel"] is None
    assert vm["features"] == {"hypervisor_hidden": False, "vendor_id": None, "kvm_hidden": False}
    assert vm["monitor"] == {"interval_seconds": None}


def test_wait_follows_start_unless_given():
    assert domain.validate(spec(start=True))["wait"] is True
    assert domain.validate(spec(start=True, wait=False))["wait"] is False


def test_ansible_nulls_count_as_not_given():
    """The module's argument spec hands every unset suboption over as None."""
    vm = domain.validate(spec(firmware=None, machine=None, domain_type=None, disks=None, devices=None, features=None,
                              monitor=None, start=None, wait=None, wait_timeout=None, loader=None, kernel=None))
    assert vm["firmware"] == "efi" and vm["machine"] == "q35" and vm["wait_timeout"] == 600


@pytest.mark.parametrize("name", ["", "-vm", "a" * 65, "a b", "a/b", "é", None, 7])
def test_bad_names_are_refused(name):
    assert "name must be 1 to 64 characters" in problems(name=name)


@pytest.mark.parametrize("name", ["a", "win11", "gpu_vm.2+test", "a" * 64, "1-x"])
def test_good_names(name):
    assert domain.validate(spec(name=name))["name"] == name


@pytest.mark.parametrize("key, value, text", [
    ("memory_mib", 32, "memory_mib must be an integer >= 64"),
    ("memory_mib", True, "memory_mib must be an integer >= 64"),
    ("memory_mib", "lots", "memory_mib must be an integer >= 64"),
    ("vcpus", 0, "vcpus must be an integer >= 1"),
    ("firmware", "uefi", "firmware must be one of efi, bios"),
    ("domain_type", "xen", "domain_type must be one of kvm, qemu, auto"),
    ("machine", "q35; rm", "machine must be a QEMU machine type"),
    ("loader", "OVMF_CODE.fd", "loader must be an absolute path"),
    ("wait_timeout", 0, "wait_timeout must be a number of seconds >= 1"),
    ("monitor", {"interval_seconds": 0.01}, "interval_seconds must be a number of seconds >= 0.1"),
    ("start", "maybe", "start must be true or false"),
    ("cmdline", ["quiet"], "cmdline must be a string"),
])
def test_bad_values_say_what_to_write(key, value, text):
    assert text in problems(**{key: value})


def test_memory_given_as_text_is_taken():
    assert domain.validate(spec(memory_mib="2048"))["memory_mib"] == 2048


def test_unknown_options_are_named_with_the_known_ones():
    text = problems(memroy_mib=4096)
    assert "unknown option(s) memroy_mib" in text and "known: name, memory_mib" in text
    assert "unknown option(s) colour" in problems(disks=[{"path": "/a.img", "colour": "red"}])
    assert "unknown option(s) rom" in problems(devices=[{"address": "0000:01:00.0", "rom": "x"}])
    assert "unknown option(s) hidden" in problems(features={"hidden": True})


def test_every_problem_is_reported_at_once():
    text = problems(memory_mib=1, vcpus=0, firmware="x")
    assert "memory_mib" in text and "vcpus" in text and "firmware" in text


def test_problems_name_the_vm():
    assert problems(vcpus=0).startswith("vm (win11).vcpus")


@pytest.mark.parametrize("address", ["01:00.0", "0000:01:00", "0000:01:20.0", "0000:01:00.8", "0000:1:00.0", "", None])
def test_addresses_must_be_full_bdfs(address):
    assert "must be a full PCI address DDDD:BB:DD.F such as 0000:01:00.0" in problems(devices=[{"address": address}])


def test_addresses_are_lowercased_sorted_and_ids_normalised():
    vm = domain.validate(spec(devices=[{"address": "0000:0A:00.1"},
                                       {"address": "0000:0a:00.0", "vendor_id": "0x10DE", "device_id": "2204", "class": "030000"}]))
    assert [d["address"] for d in vm["devices"]] == ["0000:0a:00.0", "0000:0a:00.1"]
    assert vm["devices"][0]["vendor_id"] == "10de" and vm["devices"][0]["class"] == "030000"


def test_a_function_listed_twice_is_refused():
    assert "listed twice" in problems(devices=[{"address": "0000:01:00.0"}, {"address": "0000:01:00.0"}])


@pytest.mark.parametrize("key, value", [("vendor_id", "10de1"), ("device_id", "zz"), ("class", "0300")])
def test_bad_ids_are_refused(key, value):
    assert f".{key} must be" in problems(devices=[{"address": "0000:01:00.0", key: value}])


@pytest.mark.parametrize("vendor_id", ["a" * 13, "with space", "a,b", "tab\t"])
def test_bad_hyperv_vendor_ids(vendor_id):
    assert "vendor_id must be 1 to 12 visible ASCII characters" in problems(features={"vendor_id": vendor_id})


def test_initrd_needs_kernel_and_loader_needs_efi():
    assert "initrd and cmdline need kernel" in problems(initrd="/boot/initrd.img")
    assert "apply to firmware: efi only" in problems(firmware="bios", loader="/usr/share/OVMF/OVMF_CODE.fd")


def test_disk_defaults():
    vm = domain.validate(spec(disks=[{"path": "/v/a.qcow2"}, {"path": "/v/b.img", "bus": "sata"},
                                     {"path": "/v/w.iso", "device": "cdrom"}]))
    assert vm["disks"] == [
        {"path": "/v/a.qcow2", "format": "qcow2", "bus": "virtio", "device": "disk", "readonly": False},
        {"path": "/v/b.img", "format": "raw", "bus": "sata", "device": "disk", "readonly": False},
        {"path": "/v/w.iso", "format": "raw", "bus": "sata", "device": "cdrom", "readonly": True},
    ]


def test_disk_problems():
    assert "path is required" in problems(disks=[{"format": "raw"}])
    assert "a cdrom cannot be on the virtio bus" in problems(disks=[{"path": "/w.iso", "device": "cdrom", "bus": "virtio"}])
    assert "format must be one of qcow2, raw" in problems(disks=[{"path": "/a.vmdk", "format": "vmdk"}])


def test_validate_all_refuses_a_name_used_twice_and_reports_every_vm():
    with pytest.raises(domain.SpecError) as exc:
        domain.validate_all([spec(), spec(), spec(name="x", vcpus=0)])
    assert "win11 is used twice" in str(exc.value) and "vms[2] (x).vcpus" in str(exc.value)
    with pytest.raises(domain.SpecError, match="vms must be a list"):
        domain.validate_all({"name": "x"})


# --------------------------------------------------------------------------- rendering


def test_an_efi_domain():
    out, root = rendered()
    assert root.get("type") == "kvm" and root.findtext("name") == "win11"
    assert root.find("memory").text == "4096" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "4"
    os_el = root.find("os")
    assert os_el.find("type").get("machine") == "q35" and os_el.find("type").get("arch") == "x86_64"
    loader = os_el.find("loader")
    assert loader.text == OVMF["loader"] and loader.get("readonly") == "yes" and loader.get("type") == "pflash"
    assert os_el.find("nvram").get("template") == OVMF["nvram_template"]
    assert [b.get("dev") for b in os_el.findall("boot")] == ["hd"]
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find(f"metadata/{domain.METADATA_TAG}").get("hash") == out["hash"]
    assert 'xmlns:vfio="urn:exliar-vfio:domain:1"' in out["xml"]


def test_a_bios_domain_has_no_loader_and_qemu_no_cpu_element():
    _out, root = rendered("qemu", None, firmware="bios")
    assert root.find("os/loader") is None and root.find("os/nvram") is None
    assert root.get("type") == "qemu" and root.find("cpu") is None


def test_efi_without_a_loader_cannot_render_and_auto_must_be_resolved():
    vm = domain.validate(spec())
    with pytest.raises(domain.SpecError, match="needs an OVMF loader"):
        domain.render(vm, "kvm", {})
    with pytest.raises(domain.SpecError, match="resolve auto"):
        domain.render(vm, "auto", OVMF)


def test_direct_kernel_boot_escapes_the_command_line():
    out, root = rendered(kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="console=ttyS0 a=<b>&c")
    assert root.findtext("os/kernel") == "/boot/vmlinuz" and root.findtext("os/initrd") == "/boot/initrd.img"
    assert root.findtext("os/cmdline") == "console=ttyS0 a=<b>&c" and "a=&lt;b&gt;&amp;c" in out["xml"]
    assert root.find("os/boot") is None


def test_disks_get_targets_per_bus():
    _out, root = rendered(disks=[{"path": "/v/a.qcow2"}, {"path": "/v/b.raw"}, {"path": "/v/c.img", "bus": "sata"},
                                 {"path": "/v/d.img", "bus": "scsi"}, {"path": "/v/w.iso", "device": "cdrom"}])
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [
        ("vda", "virtio"), ("vdb", "virtio"), ("sda", "sata"), ("sdb", "scsi"), ("sdc", "sata")]
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "raw", "raw", "raw", "raw"]
    assert disks[4].get("device") == "cdrom" and disks[4].find("readonly") is not None
    assert root.find("devices/controller[@type='scsi']").get("model") == "virtio-scsi"
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd", "cdrom"]


def _hostdevs(root):
    out = []
    for hostdev in root.findall("devices/hostdev"):
        assert hostdev.get("managed") == "no" and hostdev.get("mode") == "subsystem" and hostdev.get("type") == "pci"
        src, dst = hostdev.find("source/address"), hostdev.find("address")
        out.append((tuple(src.get(k) for k in ("domain", "bus", "slot", "function")),
                    tuple(dst.get(k) for k in ("bus", "slot", "function")), dst.get("multifunction")))
    return out


def test_functions_of_one_host_slot_share_a_guest_slot_on_their_own_root_port():
    _out, root = rendered(devices=[{"address": "0000:01:00.1"}, {"address": "0000:01:00.0"}, {"address": "0000:05:00.0"}])
    assert _hostdevs(root) == [
        (("0x0000", "0x01", "0x00", "0x0"), ("0x01", "0x00", "0x0"), "on"),
        (("0x0000", "0x01", "0x00", "0x1"), ("0x01", "0x00", "0x1"), None),
        (("0x0000", "0x05", "0x00", "0x0"), ("0x02", "0x00", "0x0"), None),
    ]
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    assert [p.get("index") for p in ports] == ["1", "2"]


def test_i440fx_puts_each_host_slot_on_a_root_bus_slot():
    _out, root = rendered(machine="pc", devices=[{"address": "0000:01:00.0"}, {"address": "0000:01:00.1"},
                                                 {"address": "0000:02:00.0"}])
    assert [dst for _src, dst, _mf in _hostdevs(root)] == [("0x00", "0x10", "0x0"), ("0x00", "0x10", "0x1"), ("0x00", "0x11", "0x0")]
    assert root.find("devices/controller[@model='pcie-root-port']") is None


def test_a_slot_without_function_0_is_renumbered_with_a_warning():
    devices = [{"address": "0000:01:00.1"}, {"address": "0000:01:00.2"}]
    _out, root = rendered(devices=devices)
    assert [(dst[2], mf) for _src, dst, mf in _hostdevs(root)] == [("0x0", "on"), ("0x1", None)]
    warnings = domain.topology_warnings(domain.validate(spec(devices=devices))["devices"])
    assert len(warnings) == 1 and "renumbered from 0" in warnings[0]
    assert not domain.topology_warnings(domain.validate(spec(devices=[{"address": "0000:01:00.0"}]))["devices"])


@pytest.mark.parametrize("domain_type, mode", [("kvm", "host-passthrough"), ("qemu", "host-model")])
def test_hiding_the_hypervisor(domain_type, mode):
    _out, root = rendered(domain_type, features={"hypervisor_hidden": True, "vendor_id": "exliarvfio", "kvm_hidden": True})
    assert root.find("cpu").get("mode") == mode
    assert root.find("cpu/feature").attrib == {"policy": "disable", "name": "hypervisor"}
    assert root.find("features/hyperv").get("mode") == "custom"
    assert root.find("features/hyperv/vendor_id").attrib == {"state": "on", "value": "exliarvfio"}
    assert root.find("features/kvm/hidden").get("state") == "on"
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None


def test_no_hiding_by_default():
    _out, root = rendered()
    assert root.find("features/hyperv") is None and root.find("features/kvm") is None and root.find("cpu/feature") is None


def test_the_hash_ignores_the_uuid_and_follows_the_spec():
    first, _root = rendered()
    with_uuid, root = rendered(uuid="6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11")
    assert with_uuid["hash"] == first["hash"] and root.findtext("uuid") == "6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11"
    assert rendered()[0] == first  # deterministic
    assert rendered(vcpus=8)[0]["hash"] != first["hash"]
    assert rendered("qemu")[0]["hash"] != first["hash"]
    assert rendered(devices=[{"address": "0000:01:00.0"}])[0]["hash"] != first["hash"]


def test_the_stored_hash_and_uuid_are_read_back_as_libvirt_dumps_them():
    dumped = """<domain type='kvm'>
  <name>win11</name>
  <uuid>6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11</uuid>
  <metadata xmlns:vfio="urn:exliar-vfio:domain:1">
    <vfio:domain hash="abc"/>
  </metadata>
</domain>"""
    assert domain.stored_hash(dumped) == "abc"
    assert domain.domain_uuid(dumped) == "6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11"
    out, _root = rendered()
    assert domain.stored_hash(out["xml"]) == out["hash"]
    for text in (None, "", "<not xml", "<network/>", "<domain/>"):
        assert domain.stored_hash(text) is None and domain.domain_uuid(text) is None
