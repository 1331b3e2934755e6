"""Plugin security as a user meets it: signatures, pins, approvals and unsafe directories.

The tests run as root, so "another user" is made with chown to an unused uid.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import _security
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import (
    Approvals,
    SecurityError,
    SecurityPolicy,
    check_directory_safe,
    evaluate,
    generate_keypair,
    hash_manifest,
    plugin_digest,
    sign_plugin,
    verify_plugin,
)
from ansible_collections.exliar.vfio.plugins.plugin_utils.api import PluginError, PluginMetadata

OTHER_UID = 54321
APPROVE_HINT = ("approve it with: ansible-playbook playbooks/plugins.yml -e vfio_plugin_action=approve "
                "-e vfio_plugin_name=demo")


def make_plugin(tmp_path, name="demo", files=None):
    plugin = tmp_path / "plugins" / name
    plugin.mkdir(parents=True)
    for rel, text in (files or {
        "plugin.toml": f'name = "{name}"\nversion = "1.0.0"\n',
        "plugin.py": "def create_plugin():\n    return None\n",
        "lib/helpers.py": "X = 1\n",
    }).items():
        (plugin / rel).parent.mkdir(parents=True, exist_ok=True)
        (plugin / rel).write_text(text)
    return plugin


def meta_of(plugin, version="1.0.0", permissions=(), source="directory"):
    return PluginMetadata(name=plugin.name, version=version, permissions=list(permissions), path=str(plugin),
                          source=source)


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


@pytest.fixture(scope="module")
def other_keys():
    return generate_keypair()


# ---- hashing ----------------------------------------------------------------------------

def test_hash_manifest_lists_every_file_sorted(tmp_path):
    plugin = make_plugin(tmp_path)
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\0")
    (plugin / "lib" / "__pycache__").mkdir()
    (plugin / "lib" / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"\0")
    (plugin / "plugin.sig").write_text("{}")
    hashes = hash_manifest(plugin)
    assert list(hashes) == ["lib/helpers.py", "plugin.py", "plugin.toml"]
    assert hashes["lib/helpers.py"] == hashlib.sha256(b"X = 1\n").hexdigest()


def test_lone_pyc_is_hashed_because_python_imports_it(tmp_path):
    plugin = make_plugin(tmp_path)
    (plugin / "lib" / "extra.pyc").write_bytes(b"\0")
    assert "lib/extra.pyc" in hash_manifest(plugin)


def test_digest_follows_content(tmp_path):
    plugin = make_plugin(tmp_path)
    before = plugin_digest(hash_manifest(plugin))
    assert len(before) == 64
    (plugin / "plugin.sig").write_text("signing does not change the identity")
    assert plugin_digest(hash_manifest(plugin)) == before
    (plugin / "lib" / "helpers.py").write_text("X = 2\n")
    assert plugin_digest(hash_manifest(plugin)) != before


def test_digest_of_same_files_elsewhere_is_the_same(tmp_path):
    assert plugin_digest(hash_manifest(make_plugin(tmp_path / "one"))) == plugin_digest(
        hash_manifest(make_plugin(tmp_path / "two")))


def test_symlink_outside_the_plugin_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    (tmp_path / "secret.py").write_text("")
    (plugin / "link.py").symlink_to(tmp_path / "secret.py")
    with pytest.raises(SecurityError, match="link.py: symlink to .*outside the plugin directory"):
        hash_manifest(plugin)


def test_symlink_inside_the_plugin_is_hashed_as_its_target(tmp_path):
    plugin = make_plugin(tmp_path)
    (plugin / "alias.py").symlink_to("lib/helpers.py")
    hashes = hash_manifest(plugin)
    assert hashes["alias.py"] == hashes["lib/helpers.py"]


def test_symlink_to_a_directory_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    (plugin / "loop").symlink_to(".")
    with pytest.raises(SecurityError, match="symlink to a directory"):
        hash_manifest(plugin)


def test_security_error_is_a_plugin_error():
    assert issubclass(SecurityError, PluginError)


# ---- signatures -------------------------------------------------------------------------

def test_signed_plugin_verifies(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sig = sign_plugin(plugin, keys[0])
    assert sig == plugin / "plugin.sig"
    doc = json.loads(sig.read_text())
    assert set(doc) == {"files", "signature", "key_id"}
    assert doc["files"] == hash_manifest(plugin)
    status = verify_plugin(plugin, [keys[1]])
    assert status.status == "valid"
    assert status.key_id == doc["key_id"] and len(status.key_id) == 16
    assert status.digest == plugin_digest(hash_manifest(plugin))


def test_trusted_key_as_raw_32_bytes(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    public = serialization.load_pem_public_key(keys[1])
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert verify_plugin(plugin, [raw]).status == "valid"


def test_unsigned_plugin(tmp_path, keys):
    assert verify_plugin(make_plugin(tmp_path), [keys[1]]).status == "unsigned"


def test_tampered_file_is_named(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    (plugin / "plugin.py").write_text("import os; os.system('evil')\n")
    with pytest.raises(SecurityError, match=r"files changed since the plugin was signed \(modified: plugin.py\)"):
        verify_plugin(plugin, [keys[1]])


def test_added_file_is_named(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    (plugin / "lib" / "json.py").write_text("shadow = True\n")
    with pytest.raises(SecurityError, match=r"\(added: lib/json.py\)"):
        verify_plugin(plugin, [keys[1]])


def test_removed_file_is_named(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    (plugin / "lib" / "helpers.py").unlink()
    with pytest.raises(SecurityError, match=r"\(removed: lib/helpers.py\)"):
        verify_plugin(plugin, [keys[1]])


def test_bytecode_caches_do_not_break_a_signature(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\0")
    assert verify_plugin(plugin, [keys[1]]).status == "valid"


def test_unknown_key(tmp_path, keys, other_keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, other_keys[0])
    kid = json.loads((plugin / "plugin.sig").read_text())["key_id"]
    with pytest.raises(SecurityError, match=f"signed by unknown key {kid}"):
        verify_plugin(plugin, [keys[1]])


def test_forged_file_list_fails_the_signature(tmp_path, keys):
    """An attacker who changes a file and updates its hash in plugin.sig breaks the signature."""
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    (plugin / "plugin.py").write_text("evil = True\n")
    sig = plugin / "plugin.sig"
    doc = json.loads(sig.read_text())
    doc["files"] = hash_manifest(plugin)
    sig.write_text(json.dumps(doc))
    with pytest.raises(SecurityError, match="bad signature"):
        verify_plugin(plugin, [keys[1]])


def test_signature_made_with_another_key_under_a_trusted_id(tmp_path, keys, other_keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, other_keys[0])
    sig = plugin / "plugin.sig"
    doc = json.loads(sig.read_text())
    sign_plugin(plugin, keys[0])
    doc["key_id"] = json.loads(sig.read_text())["key_id"]
    sig.write_text(json.dumps(doc))
    with pytest.raises(SecurityError, match="bad signature"):
        verify_plugin(plugin, [keys[1]])


def test_malformed_signature_file(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    (plugin / "plugin.sig").write_text("not json")
    with pytest.raises(SecurityError, match="plugin.sig: cannot read the signature file"):
        verify_plugin(plugin, [keys[1]])


# ---- directory safety -------------------------------------------------------------------

def test_safe_directory_passes(tmp_path):
    check_directory_safe(make_plugin(tmp_path))


def test_world_writable_plugin_directory_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    plugin.chmod(0o777)
    with pytest.raises(SecurityError, match=r"plugin directory .* writable by group and others \(mode 0777\)"):
        check_directory_safe(plugin)


def test_sticky_bit_does_not_excuse_the_plugin_directory_itself(tmp_path):
    plugin = make_plugin(tmp_path)
    plugin.chmod(0o1777)
    with pytest.raises(SecurityError, match="writable by"):
        check_directory_safe(plugin)


def test_group_writable_parent_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    plugin.parent.chmod(0o775)
    with pytest.raises(SecurityError, match=f"{plugin.parent}: parent directory .* writable by group"):
        check_directory_safe(plugin)


def test_sticky_world_writable_parent_is_accepted(tmp_path):
    plugin = make_plugin(tmp_path)
    plugin.parent.chmod(0o1777)
    check_directory_safe(plugin)


def test_group_writable_file_inside_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    (plugin / "lib" / "helpers.py").chmod(0o664)
    with pytest.raises(SecurityError, match=r"lib/helpers.py: writable by group \(mode 0664\)"):
        check_directory_safe(plugin)


def test_directory_owned_by_another_user_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    os.chown(plugin, OTHER_UID, -1)
    with pytest.raises(SecurityError, match=f"owned by uid {OTHER_UID}, not by root or you"):
        check_directory_safe(plugin)


def test_file_owned_by_another_user_is_refused(tmp_path):
    plugin = make_plugin(tmp_path)
    os.chown(plugin / "plugin.py", OTHER_UID, -1)
    with pytest.raises(SecurityError, match=f"plugin.py: owned by uid {OTHER_UID}"):
        check_directory_safe(plugin)


def test_unsafe_target_behind_a_symlinked_plugin_directory(tmp_path):
    real = make_plugin(tmp_path / "real")
    real.parent.chmod(0o777)
    link = tmp_path / "linked"
    link.symlink_to(real)
    with pytest.raises(SecurityError, match=f"{real.parent}: parent directory"):
        check_directory_safe(link)


# ---- approvals --------------------------------------------------------------------------

def test_approvals_file_is_written_0600_and_reloads(tmp_path):
    path = tmp_path / "state" / "approvals.json"
    approvals = Approvals.load(path)
    plugin = make_plugin(tmp_path)
    meta = meta_of(plugin, permissions=["system:read"])
    record = approvals.approve(meta, "d1", ["system:read"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(record) == {"name", "version", "digest", "permissions", "critical", "time"}
    again = Approvals.load(path)
    assert again.get("demo") == record
    assert again.check(meta, "d1").approved
    assert [p for p in os.listdir(path.parent) if p != "approvals.json"] == []  # no temp file left


def test_unapproved(tmp_path):
    meta = meta_of(make_plugin(tmp_path), permissions=["system:read"])
    status = Approvals(tmp_path / "a.json").check(meta, "d1")
    assert (status.approved, status.status) == (False, "not_approved")
    assert APPROVE_HINT in status.reason


def test_changed_plugin_needs_a_new_approval(tmp_path):
    approvals = Approvals(tmp_path / "a.json")
    meta = meta_of(make_plugin(tmp_path))
    approvals.approve(meta, "d1", [])
    status = approvals.check(meta, "d2")
    assert (status.approved, status.status) == (False, "changed")
    assert "its files changed" in status.reason
    newer = meta_of(make_plugin(tmp_path / "v2"), version="1.1.0")
    status = approvals.check(newer, "d1")
    assert status.status == "changed" and "version 1.0.0 -> 1.1.0" in status.reason


def test_grown_permissions(tmp_path):
    approvals = Approvals(tmp_path / "a.json")
    plugin = make_plugin(tmp_path)
    approvals.approve(meta_of(plugin, permissions=["system:read"]), "d1", ["system:read"])
    status = approvals.check(meta_of(plugin, permissions=["system:read", "vm:modify"]), "d1")
    assert (status.approved, status.status) == (False, "permissions_grown")
    assert "vm:modify" in status.reason
    assert approvals.check(meta_of(plugin, permissions=[]), "d1").approved  # fewer is fine


def test_critical_permission_needs_critical_approval(tmp_path):
    approvals = Approvals(tmp_path / "a.json")
    meta = meta_of(make_plugin(tmp_path), permissions=["devices:read", "vfio:manage"])
    approvals.approve(meta, "d1", meta.permissions)
    status = approvals.check(meta, "d1")
    assert (status.approved, status.status) == (False, "critical_not_approved")
    assert "vfio:manage" in status.reason and "vfio_plugin_critical=true" in status.reason
    approvals.approve(meta, "d1", meta.permissions, critical=True)
    assert approvals.check(meta, "d1").approved


def test_revoke(tmp_path):
    path = tmp_path / "a.json"
    approvals = Approvals(path)
    meta = meta_of(make_plugin(tmp_path))
    approvals.approve(meta, "d1", [])
    assert approvals.revoke("demo") is True
    assert approvals.revoke("demo") is False
    assert Approvals.load(path).check(meta, "d1").status == "not_approved"


def test_approvals_file_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "a.json"
    Approvals(path).approve(meta_of(make_plugin(tmp_path)), "d1", [])
    path.chmod(0o666)
    with pytest.raises(SecurityError, match="approvals file"):
        Approvals.load(path)


def test_corrupt_approvals_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("{")
    path.chmod(0o600)
    with pytest.raises(SecurityError, match="cannot read the approvals file"):
        Approvals.load(path)


# ---- evaluate: the whole decision -------------------------------------------------------

def approved(tmp_path, meta):
    approvals = Approvals(tmp_path / "approvals.json")
    approvals.approve(meta, plugin_digest(hash_manifest(meta.path)), meta.permissions)
    return approvals


def test_unsigned_approved_plugin_loads_with_a_warning(tmp_path):
    meta = meta_of(make_plugin(tmp_path), permissions=["system:read"])
    decision = evaluate(meta, SecurityPolicy(), approved(tmp_path, meta), [])
    assert decision.allowed and decision.reason is None
    assert decision.signature == "unsigned"
    assert any(w.startswith("unsigned plugin") for w in decision.warnings)
    assert decision.digest == plugin_digest(hash_manifest(meta.path))


def test_unsigned_plugin_refused_when_signatures_are_required(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    decision = evaluate(meta, SecurityPolicy(require_signatures=True), approved(tmp_path, meta), [])
    assert not decision.allowed
    assert "unsigned and signatures are required" in decision.reason


def test_signed_plugin_with_required_signatures(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    meta = meta_of(plugin)
    policy = SecurityPolicy(require_signatures=True, trusted_keys=[keys[1]])
    decision = evaluate(meta, policy, approved(tmp_path, meta), [])
    assert decision.allowed and decision.signature == "valid" and decision.warnings == []
    # the key may also come as the trusted_keys argument
    decision = evaluate(meta, SecurityPolicy(require_signatures=True), approved(tmp_path, meta), [keys[1]])
    assert decision.allowed


def test_tampered_signed_plugin_is_refused(tmp_path, keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    meta = meta_of(plugin)
    approvals = approved(tmp_path, meta)
    (plugin / "extra.py").write_text("")
    decision = evaluate(meta, SecurityPolicy(), approvals, [keys[1]])
    assert not decision.allowed and decision.signature == "invalid"
    assert "added: extra.py" in decision.reason


def test_signature_by_untrusted_key_is_refused(tmp_path, keys, other_keys):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, other_keys[0])
    meta = meta_of(plugin)
    decision = evaluate(meta, SecurityPolicy(), approved(tmp_path, meta), [keys[1]])
    assert not decision.allowed and "signed by unknown key" in decision.reason


def test_unapproved_plugin_is_refused_with_the_command_to_approve_it(tmp_path):
    meta = meta_of(make_plugin(tmp_path), permissions=["system:read"])
    decision = evaluate(meta, SecurityPolicy(), Approvals(tmp_path / "none.json"), [])
    assert not decision.allowed
    assert APPROVE_HINT in decision.reason
    assert evaluate(meta, SecurityPolicy(), None, []).allowed is False


def test_changed_plugin_needs_new_approval(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    approvals = approved(tmp_path, meta)
    (tmp_path / "plugins" / "demo" / "plugin.py").write_text("changed = True\n")
    decision = evaluate(meta, SecurityPolicy(), approvals, [])
    assert not decision.allowed and "changed since it was approved" in decision.reason


def test_pinned_digest_matches(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    digest = plugin_digest(hash_manifest(meta.path))
    for pin in (digest, f"sha256:{digest.upper()}"):
        assert evaluate(meta, SecurityPolicy(pinned={"demo": pin}), approved(tmp_path, meta), []).allowed


def test_pinned_digest_differs(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    approvals = approved(tmp_path, meta)
    pin = plugin_digest(hash_manifest(meta.path))
    (tmp_path / "plugins" / "demo" / "plugin.py").write_text("changed = True\n")
    decision = evaluate(meta, SecurityPolicy(pinned={"demo": pin}), approvals, [])
    assert not decision.allowed
    assert "does not match its pinned digest" in decision.reason and pin in decision.reason


def test_pin_of_another_plugin_does_not_matter(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    assert evaluate(meta, SecurityPolicy(pinned={"other": "0" * 64}), approved(tmp_path, meta), []).allowed


def test_unsafe_directory_is_refused_before_anything_else(tmp_path):
    meta = meta_of(make_plugin(tmp_path))
    approvals = approved(tmp_path, meta)
    os.chmod(meta.path, 0o777)
    decision = evaluate(meta, SecurityPolicy(), approvals, [])
    assert not decision.allowed and "writable by" in decision.reason
    assert decision.signature == "unchecked"


def test_builtin_counts_as_approved_for_non_critical_permissions(tmp_path):
    meta = meta_of(make_plugin(tmp_path), permissions=["system:read", "ui"], source="builtin")
    decision = evaluate(meta, SecurityPolicy(require_signatures=True), Approvals(tmp_path / "none.json"), [])
    assert decision.allowed and decision.warnings == []


def test_builtin_with_critical_permission_needs_approval(tmp_path):
    meta = meta_of(make_plugin(tmp_path), permissions=["vfio:manage"], source="builtin")
    decision = evaluate(meta, SecurityPolicy(), Approvals(tmp_path / "none.json"), [])
    assert not decision.allowed and "not approved" in decision.reason
    approvals = Approvals(tmp_path / "a.json")
    approvals.approve(meta, plugin_digest(hash_manifest(meta.path)), meta.permissions, critical=True)
    assert evaluate(meta, SecurityPolicy(), approvals, []).allowed


def test_builtin_is_still_pinned(tmp_path):
    meta = meta_of(make_plugin(tmp_path), source="builtin")
    decision = evaluate(meta, SecurityPolicy(pinned={"demo": "0" * 64}), None, [])
    assert not decision.allowed and "pinned digest" in decision.reason


# ---- without cryptography (a controller Python without it) ------------------------------

def test_unsigned_plugins_work_without_cryptography(tmp_path, monkeypatch):
    meta = meta_of(make_plugin(tmp_path))
    approvals = approved(tmp_path, meta)
    monkeypatch.setattr(_security, "HAS_CRYPTOGRAPHY", False)
    assert evaluate(meta, SecurityPolicy(), approvals).allowed


def test_signed_plugins_need_cryptography(tmp_path, keys, monkeypatch):
    plugin = make_plugin(tmp_path)
    sign_plugin(plugin, keys[0])
    monkeypatch.setattr(_security, "HAS_CRYPTOGRAPHY", False)
    with pytest.raises(SecurityError, match="pip install cryptography"):
        verify_plugin(plugin, [keys[1]])
    with pytest.raises(SecurityError, match="pip install cryptography"):
        generate_keypair()
