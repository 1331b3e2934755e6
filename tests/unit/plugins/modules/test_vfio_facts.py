"""The vfio_facts module run the AnsibleModule way: arguments in, one JSON result out."""
from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from helpers import NVIDIA_GPU, by_address

from ansible_collections.exliar.vfio.plugins.modules import vfio_facts


def run_module(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            vfio_facts.main()
    out = capsys.readouterr().out
    return exc.value.code, json.loads(out)


def _warning_texts(result):
    texts = []
    for w in result.get("warnings") or []:
        texts.append(w if isinstance(w, str) else json.dumps(w))
    return "\n".join(texts)


def test_facts_of_a_sysroot(capsys, desktop_root):
    code, result = run_module(capsys, {"root": str(desktop_root)})
    assert code == 0
    assert result["changed"] is False
    assert not result.get("failed")
    vfio = result["ansible_facts"]["vfio"]
    assert vfio["root"] == str(desktop_root)
    assert vfio["facts_version"] == 1
    assert vfio["iommu"]["enabled"] is True
    assert by_address(vfio["gpus"])[NVIDIA_GPU]["group_viable"] is True
    assert by_address(vfio["pci_devices"])[NVIDIA_GPU]["vendor_name"] == "NVIDIA Corporation"
    assert not result.get("warnings")


def test_names_off(capsys, desktop_root):
    code, result = run_module(capsys, {"root": str(desktop_root), "names": False})
    assert code == 0
    devs = result["ansible_facts"]["vfio"]["pci_devices"]
    assert devs and all(d["vendor_name"] is None for d in devs)


def test_check_mode_is_supported(capsys, desktop_root):
    code, result = run_module(capsys, {"root": str(desktop_root), "_ansible_check_mode": True})
    assert code == 0 and result["changed"] is False and "vfio" in result["ansible_facts"]


def test_wrong_option_name_fails_and_names_it(capsys, desktop_root):
    code, result = run_module(capsys, {"rot": str(desktop_root)})
    assert code != 0
    assert result["failed"] is True
    assert "rot" in result["msg"]
    assert "ansible_facts" not in result


def test_wrong_option_type_fails(capsys):
    code, result = run_module(capsys, {"names": "perhaps"})
    assert code != 0 and result["failed"] is True and "names" in result["msg"]


def test_root_that_does_not_exist_is_a_warning_not_a_failure(capsys, tmp_path):
    root = tmp_path / "missing-host"
    code, result = run_module(capsys, {"root": str(root)})
    assert code == 0
    assert not result.get("failed")
    assert result["ansible_facts"]["vfio"]["warnings"]
    assert str(root) in _warning_texts(result)
