"""The initramfs configuration plan over the real default files of each generator (data/initramfs/,
each citing its source): user content kept byte for byte outside the collection's block,
idempotence, removal, the legacy and multi-line mkinitcpio syntaxes, the modconf check, kernels with
different module sets, and the shell files checked by a real shell where one is installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_booster as booster
from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as cfg
from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_dracut as dracut
from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_mkinitcpio as mkinitcpio
from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_tools as itools
from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import MODPROBE_CONF, OVERRIDE_SCRIPT

DATA = Path(__file__).resolve().parent / "data" / "initramfs"
OLD, NEW = "5.15.0-105-generic", "6.8.0-31-generic"
ALL4 = ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"]
ALL3 = ["vfio", "vfio_iommu_type1", "vfio_pci"]
BY_ID = {"modules": {NEW: ALL3}, "files": [MODPROBE_CONF]}
BY_ADDRESS = {"modules": {NEW: ALL3}, "files": [MODPROBE_CONF, OVERRIDE_SCRIPT]}
MIXED_KERNELS = {"modules": {OLD: ALL4, NEW: ALL3}, "files": [MODPROBE_CONF]}
REMOVED = {"modules": {}, "files": []}
BASH = shutil.which("bash")
SH = shutil.which("sh")


def data(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def plan(generator, handoff, current, version=None) -> dict:
    return cfg.plan_initramfs(generator, handoff, current, version)


def applied(current: dict, result: dict) -> dict:
    """``current`` after the plan's files are written (None: removed)."""
    out = dict(current)
    for path, spec in result["files"].items():
        out[path] = None if spec is None else spec["content"]
    return out


def content(result: dict, path: str) -> str:
    assert not result["errors"], result["errors"]
    return result["files"][path]["content"]


def assert_idempotent(generator, handoff, current, version=None) -> dict:
    first = plan(generator, handoff, current, version)
    assert not first["errors"], first["errors"]
    second = plan(generator, handoff, applied(current, first), version)
    assert second == first
    return first


def our_block(text: str) -> str:
    start, end = text.index(cfg.BEGIN), text.index(cfg.END) + len(cfg.END) + 1
    return text[start:end]


# ---- test data ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()))
def test_every_data_file_cites_its_source(name):
    head = data(name).splitlines()[0]
    assert head.startswith("# exliar.vfio test data. Source:")
    assert "github.com" in data(name)[:600]


# ---- dispatcher ----------------------------------------------------------------------------------------
def test_unknown_generator_is_an_error_and_changes_nothing():
    res = plan("mkinitramfs-ng", BY_ID, {})
    assert res["files"] == {} and res["kernel_params"] == []
    assert res["errors"] == ["unknown initramfs generator 'mkinitramfs-ng' (known: initramfs-tools, dracut, mkinitcpio, booster): "
                             "report it, nothing changed"]


def test_no_generator_detected_is_an_error():
    res = plan(None, BY_ID, {})
    assert res["files"] == {} and "no initramfs generator detected" in res["errors"][0]


@pytest.mark.parametrize("handoff, what", [
    ({"modules": {NEW: ["vfio; rm -rf /"]}, "files": []}, "is not a module name"),
    ({"modules": {NEW: ALL3}, "files": ["/etc/modprobe.d/a b.conf"]}, "is not a plain absolute path"),
    ({"modules": {NEW: ALL3}, "files": ["relative.conf"]}, "is not a plain absolute path"),
    ({"modules": ["vfio"], "files": []}, "must map each kernel version"),
])
def test_handoff_that_cannot_be_written_safely_is_refused(handoff, what):
    for generator in cfg.GENERATORS:
        res = plan(generator, handoff, {})
        assert res["files"] == {} and what in res["errors"][0]


def test_one_module_list_for_all_kernels():
    view, errors = cfg.handoff_view(MIXED_KERNELS)
    assert not errors
    # vfio_virqfd only on 5.15: a dependency of vfio_pci there, so a shared configuration leaves it out
    assert view.modules == ALL3 and view.partial == set() and view.kernels == [OLD, NEW]
    view, _errors = cfg.handoff_view({"modules": {OLD: ALL4, "5.10.0-28-amd64": ALL4}, "files": []})
    assert view.modules == ALL4
    # vfio_pci built into one kernel (left out of its list by the binding stage): listed, marked partial
    view, _errors = cfg.handoff_view({"modules": {NEW: ALL3, "6.8.0-1-builtin": ["vfio", "vfio_iommu_type1"]}, "files": []})
    assert view.modules == ALL3 and view.partial == {"vfio_pci"}


@pytest.mark.parametrize("generator", cfg.GENERATORS)
def test_only_dracut_hands_a_kernel_parameter_over(generator):
    current = {mkinitcpio.MAIN: data("mkinitcpio-v41.conf"), mkinitcpio.DROPIN_DIR: ""}
    res = plan(generator, BY_ADDRESS, current)
    assert not res["errors"] and res["kernel_params"] == (["rd.driver.pre=vfio_pci"] if generator == "dracut" else [])


def test_strip_ours_is_the_exact_inverse_also_without_a_final_newline():
    for text in ("a\nb", "a\nb\n", "", "x"):
        added = cfg.with_block(text, "note", ["vfio"])
        assert cfg.strip_ours(added) == (text, None)
    lines = ["keep\n", "MODULES=(a\n", "b)"]
    replaced = "".join(cfg.replace_with_block(lines, 1, 3, "note", ["MODULES=(vfio a b)"]))
    assert cfg.strip_ours(replaced) == ("keep\nMODULES=(a\nb)", None)


def test_strip_ours_refuses_a_broken_block():
    assert cfg.strip_ours(f"a\n{cfg.BEGIN}\nvfio\n")[1].startswith(f"'{cfg.BEGIN}' on line 2 has no")
    assert cfg.strip_ours(f"a\n{cfg.END}\n")[1].startswith(f"'{cfg.END}' on line 2 has no")


# ---- initramfs-tools -----------------------------------------------------------------------------------
def test_initramfs_tools_adds_a_block_after_the_debian_default():
    default = data("initramfs-tools-modules")
    res = assert_idempotent("initramfs-tools", BY_ID, {itools.MODULES_FILE: default})
    text = content(res, itools.MODULES_FILE)
    assert text.startswith(default)          # every user line and comment, byte for byte
    assert text[len(default):] == (f"{cfg.BEGIN}\n# {itools.NOTE}\nvfio\nvfio_iommu_type1\nvfio_pci\n{cfg.END}\n")
    assert res["files"][itools.MODULES_FILE]["mode"] == 0o644
    assert res["files"][itools.HOOK] is None          # nothing but /etc/modprobe.d, which mkinitramfs copies itself


def test_initramfs_tools_removal_gives_the_file_back():
    default = data("initramfs-tools-modules")
    res = plan("initramfs-tools", BY_ADDRESS, {itools.MODULES_FILE: default})
    after = applied({itools.MODULES_FILE: default}, res)
    removed = plan("initramfs-tools", REMOVED, after)
    assert removed["files"] == {itools.MODULES_FILE: {"content": default, "mode": 0o644}, itools.HOOK: None}


def test_initramfs_tools_block_is_replaced_where_it_is_and_user_lines_stay():
    default = data("initramfs-tools-modules")
    first = content(plan("initramfs-tools", BY_ID, {itools.MODULES_FILE: default}), itools.MODULES_FILE)
    edited = first.replace("# sd_mod\n", "# sd_mod\nvfio-pci ids=10de:1e87\n") + "raid1\n"   # the user edits around the block
    again = content(plan("initramfs-tools", MIXED_KERNELS, {itools.MODULES_FILE: edited}), itools.MODULES_FILE)
    assert again.count(cfg.BEGIN) == 1 and again.endswith(f"{cfg.END}\nraid1\n")
    assert "vfio-pci ids=10de:1e87\n" in again
    assert our_block(again).splitlines()[2:-1] == ["vfio", "vfio_iommu_type1"]   # vfio_pci is the user's line now
    assert plan("initramfs-tools", REMOVED, {itools.MODULES_FILE: again})["files"][itools.MODULES_FILE]["content"] \
        == default.replace("# sd_mod\n", "# sd_mod\nvfio-pci ids=10de:1e87\n") + "raid1\n"


def test_initramfs_tools_kernels_with_different_module_sets():
    # /etc/initramfs-tools/modules serves every kernel: vfio_virqfd (5.15 only) would be a modprobe error at each
    # boot of 6.8, and it comes with vfio_pci on 5.15 anyway
    text = content(plan("initramfs-tools", MIXED_KERNELS, {itools.MODULES_FILE: data("initramfs-tools-modules")}), itools.MODULES_FILE)
    assert "vfio_virqfd" not in text
    both_old = {"modules": {OLD: ALL4, "5.10.0-28-amd64": ALL4}, "files": [MODPROBE_CONF]}
    text = content(plan("initramfs-tools", both_old, {itools.MODULES_FILE: data("initramfs-tools-modules")}), itools.MODULES_FILE)
    assert our_block(text).splitlines()[2:-1] == ALL4


def test_initramfs_tools_hook_for_the_override_script():
    res = assert_idempotent("initramfs-tools", BY_ADDRESS, {itools.MODULES_FILE: data("initramfs-tools-modules")})
    hook = res["files"][itools.HOOK]
    assert hook["mode"] == 0o755
    text = hook["content"]
    assert text.startswith("#!/bin/sh\n" + cfg.OWNED_HEADER)
    assert 'PREREQ=""\n\nprereqs()\n{\n\techo "$PREREQ"\n}\n\ncase $1 in\nprereqs)\n\tprereqs\n\texit 0\n\t;;\nesac\n' in text
    assert ". /usr/share/initramfs-tools/hook-functions\n" in text
    assert f'\tcopy_exec "{OVERRIDE_SCRIPT}"\n' in text and MODPROBE_CONF not in text
    assert text.endswith("exit 0\n")


@pytest.mark.skipif(SH is None, reason="no sh")
def test_initramfs_tools_hook_is_valid_posix_sh(tmp_path):
    hook = tmp_path / "exliar-vfio"
    hook.write_text(plan("initramfs-tools", BY_ADDRESS, {})["files"][itools.HOOK]["content"])
    assert subprocess.run([SH, "-n", str(hook)], check=False).returncode == 0
    prereqs = subprocess.run([SH, str(hook), "prereqs"], capture_output=True, text=True, check=False)
    assert (prereqs.returncode, prereqs.stdout) == (0, "\n")


def test_initramfs_tools_missing_file_is_created_and_removed():
    res = plan("initramfs-tools", BY_ID, {itools.MODULES_FILE: None})
    assert content(res, itools.MODULES_FILE).startswith(cfg.BEGIN)
    assert plan("initramfs-tools", REMOVED, {itools.MODULES_FILE: None})["files"][itools.MODULES_FILE] is None


def test_initramfs_tools_broken_block_is_an_error():
    res = plan("initramfs-tools", BY_ID, {itools.MODULES_FILE: data("initramfs-tools-modules") + cfg.BEGIN + "\nvfio\n"})
    assert res["files"] == {} and "has no '# exliar.vfio: end'" in res["errors"][0]


# ---- dracut --------------------------------------------------------------------------------------------
def test_dracut_drop_in():
    res = assert_idempotent("dracut", BY_ADDRESS, {"/etc/dracut.conf": data("dracut.conf")})
    assert set(res["files"]) == {dracut.DROPIN}      # /etc/dracut.conf and other drop-ins are never touched
    text = content(res, dracut.DROPIN)
    assert text.startswith(cfg.OWNED_HEADER)
    assert 'force_drivers+=" vfio vfio_iommu_type1 vfio_pci "\n' in text      # spaces inside the quotes: dracut.conf(5)
    assert f'install_items+=" {MODPROBE_CONF} {OVERRIDE_SCRIPT} "\n' in text
    assert res["kernel_params"] == ["rd.driver.pre=vfio_pci"]      # for the bootloader stage (the image says it too)


def test_dracut_removal_and_kernels():
    assert plan("dracut", REMOVED, {dracut.DROPIN: "x"})["files"] == {dracut.DROPIN: None}
    text = content(plan("dracut", MIXED_KERNELS, {}), dracut.DROPIN)
    assert 'force_drivers+=" vfio vfio_iommu_type1 vfio_pci "' in text and f'install_items+=" {MODPROBE_CONF} "' in text


@pytest.mark.skipif(BASH is None, reason="no bash")
def test_dracut_drop_in_appends_like_dracut_sources_it(tmp_path):
    conf = tmp_path / "all.conf"
    conf.write_text('force_drivers+=" nvme "\n' + content(plan("dracut", BY_ADDRESS, {}), dracut.DROPIN))
    out = subprocess.run([BASH, "-c", f'. "{conf}"; echo "[$force_drivers]"; echo "[$install_items]"'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].split() == ["[", "nvme", "vfio", "vfio_iommu_type1", "vfio_pci", "]"]
    assert out[1].split() == ["[", MODPROBE_CONF, OVERRIDE_SCRIPT, "]"]


def test_dracut_warns_about_later_resets_and_kernel_only():
    current = {"/etc/dracut.conf.d/zz-local.conf": 'force_drivers="nvme"\n', "/etc/dracut.conf.d/10-early.conf": 'install_items="a"\n',
               "/usr/lib/dracut/dracut.conf.d/50-x.conf": "kernel_only=yes\n"}
    res = plan("dracut", BY_ID, current)
    assert len(res["warnings"]) == 2
    assert res["warnings"][0].startswith("/etc/dracut.conf.d/zz-local.conf:1 sets force_drivers= (not +=)")
    assert "kernel_only=yes" in res["warnings"][1]


# ---- mkinitcpio ----------------------------------------------------------------------------------------
V41 = data("mkinitcpio-v41.conf")
V23 = data("mkinitcpio-v23.conf")


def bash_effective(tmp_path, main: str, dropins=()) -> dict:
    """MODULES, FILES and HOOKS as mkinitcpio sees them: the main file and the drop-ins concatenated
    and sourced by bash, strings split into arrays (mkinitcpio's arrayize_config does that)."""
    conf = tmp_path / "all.conf"
    conf.write_text(main + "".join(dropins))
    script = (f'. "{conf}" || exit 9\n'
              'for v in MODULES FILES HOOKS; do\n'
              '  declare -n ref=$v\n'
              '  if [[ ${ref@a} != *a* ]]; then read -r -d "" -a arr <<< "${ref-}"; else arr=("${ref[@]}"); fi\n'
              '  printf "%s=%s\\n" "$v" "$(IFS=,; echo "${arr[*]}")"\n'
              '  unset -n ref\n'
              'done\n')
    res = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return {k: v.split(",") if v else [] for k, v in (line.split("=", 1) for line in res.stdout.splitlines())}


def test_mkinitcpio_drop_in_leaves_the_real_default_untouched():
    current = {mkinitcpio.MAIN: V41, mkinitcpio.DROPIN_DIR: ""}
    res = assert_idempotent("mkinitcpio", BY_ADDRESS, current)
    assert res["files"][mkinitcpio.MAIN] == {"content": V41, "mode": 0o644}
    text = content(res, mkinitcpio.DROPIN)
    assert text.startswith(cfg.OWNED_HEADER)
    assert 'MODULES=(vfio_pci vfio vfio_iommu_type1 "${MODULES[@]}")\n' in text
    assert f"FILES+=({OVERRIDE_SCRIPT})\n" in text
    assert res["warnings"] == [] and res["errors"] == []


@pytest.mark.skipif(BASH is None, reason="no bash")
@pytest.mark.parametrize("main, modules", [
    (V41, []),
    (V23, []),
    (V41.replace("MODULES=()", 'MODULES=(\n    amdgpu   # early KMS\n    "nvme"\n)'), ["amdgpu", "nvme"]),
    (V23.replace('MODULES=""', 'MODULES="amdgpu\n nvme"'), ["amdgpu", "nvme"]),
])
def test_mkinitcpio_drop_in_as_bash_sources_it(tmp_path, main, modules):
    dropin = content(plan("mkinitcpio", BY_ADDRESS, {mkinitcpio.MAIN: main}, "39.2"), mkinitcpio.DROPIN)
    seen = bash_effective(tmp_path, main, [dropin])
    assert seen["MODULES"] == ["vfio_pci", "vfio", "vfio_iommu_type1"] + modules
    assert seen["FILES"] == [OVERRIDE_SCRIPT]
    assert "modconf" in seen["HOOKS"]


def test_mkinitcpio_chooses_drop_in_or_in_place():
    current = {mkinitcpio.MAIN: V41, mkinitcpio.DROPIN_DIR: ""}
    assert plan("mkinitcpio", BY_ID, current, "v35")["files"][mkinitcpio.DROPIN] is None       # the version decides
    assert plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V41}, "mkinitcpio 36")["files"][mkinitcpio.DROPIN] is not None
    assert plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V41})["files"][mkinitcpio.DROPIN] is None  # no version, no directory
    assert plan("mkinitcpio", BY_ID, current)["files"][mkinitcpio.DROPIN] is not None


def test_mkinitcpio_old_preset_with_all_config_means_in_place():
    current = {mkinitcpio.MAIN: V41, mkinitcpio.DROPIN_DIR: "", "/etc/mkinitcpio.d/linux.preset": data("linux-v35.preset")}
    res = assert_idempotent("mkinitcpio", BY_ID, current)
    assert res["files"][mkinitcpio.DROPIN] is None
    assert "which makes it ignore /etc/mkinitcpio.conf.d/" in res["warnings"][0]
    current["/etc/mkinitcpio.d/linux.preset"] = data("linux-v41.preset")    # ALL_config commented out since v36
    assert plan("mkinitcpio", BY_ID, current)["files"][mkinitcpio.DROPIN] is not None
    current["/etc/mkinitcpio.d/linux.preset"] = 'default_config="/etc/mkinitcpio-custom.conf"\n'
    res = plan("mkinitcpio", BY_ID, current)
    assert res["files"] == {} and "uses /etc/mkinitcpio-custom.conf" in res["errors"][0]


def test_mkinitcpio_in_place_on_the_real_default():
    res = assert_idempotent("mkinitcpio", BY_ADDRESS, {mkinitcpio.MAIN: V41}, "35")
    text = content(res, mkinitcpio.MAIN)
    assert f"{cfg.WAS}MODULES=()\n{cfg.BEGIN}\n# {mkinitcpio.NOTE_MODULES}\nMODULES=(vfio_pci vfio vfio_iommu_type1)\n{cfg.END}\n" in text
    assert f"{cfg.WAS}FILES=()\n{cfg.BEGIN}\n# {mkinitcpio.NOTE_FILES}\nFILES=({OVERRIDE_SCRIPT})\n{cfg.END}\n" in text
    assert cfg.strip_ours(text) == (V41, None)
    removed = plan("mkinitcpio", REMOVED, {mkinitcpio.MAIN: text}, "35")
    assert removed["files"] == {mkinitcpio.MAIN: {"content": V41, "mode": 0o644}, mkinitcpio.DROPIN: None}


def test_mkinitcpio_in_place_legacy_string_syntax():
    res = assert_idempotent("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V23})
    text = content(res, mkinitcpio.MAIN)
    assert f'{cfg.WAS}MODULES=""\n{cfg.BEGIN}\n# {mkinitcpio.NOTE_MODULES}\nMODULES="vfio_pci vfio vfio_iommu_type1"\n{cfg.END}\n' in text
    assert "FILES=" not in our_block(text) and text.count(cfg.BEGIN) == 1      # no script: FILES untouched
    assert cfg.strip_ours(text) == (V23, None)


def test_mkinitcpio_in_place_multi_line_array_with_user_modules():
    user = 'MODULES=(\n    amdgpu   # early KMS\n    "vfio-pci"\n    nvme\n)\n'
    main = V41.replace("MODULES=()\n", user)
    res = assert_idempotent("mkinitcpio", BY_ID, {mkinitcpio.MAIN: main}, "35")
    text = content(res, mkinitcpio.MAIN)
    # the user's lines kept verbatim as comments, ours first, the user's vfio-pci not repeated
    assert "".join(cfg.WAS + line for line in user.splitlines(keepends=True)) + cfg.BEGIN in text
    assert "\nMODULES=(vfio_pci vfio vfio_iommu_type1 amdgpu nvme)\n" in text
    assert cfg.strip_ours(text) == (main, None)


@pytest.mark.skipif(BASH is None, reason="no bash")
def test_mkinitcpio_in_place_result_as_bash_sources_it(tmp_path):
    main = V41.replace("MODULES=()\n", "MODULES=(\n    amdgpu\n)\nMODULES+=(i915)\n")
    text = content(plan("mkinitcpio", BY_ADDRESS, {mkinitcpio.MAIN: main}, "35"), mkinitcpio.MAIN)
    seen = bash_effective(tmp_path, text)
    assert seen["MODULES"] == ["vfio_pci", "vfio", "vfio_iommu_type1", "amdgpu", "i915"]
    assert seen["FILES"] == [OVERRIDE_SCRIPT]
    legacy = content(plan("mkinitcpio", BY_ADDRESS, {mkinitcpio.MAIN: V23.replace('FILES=""', 'FILES="/etc/x"')}), mkinitcpio.MAIN)
    seen = bash_effective(tmp_path, legacy)
    assert seen["MODULES"] == ["vfio_pci", "vfio", "vfio_iommu_type1"] and seen["FILES"] == ["/etc/x", OVERRIDE_SCRIPT]


def test_mkinitcpio_user_configuration_already_right_is_not_touched():
    main = V41.replace("MODULES=()", "MODULES=(vfio_pci vfio vfio_iommu_type1 amdgpu)")
    res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: main}, "35")
    assert content(res, mkinitcpio.MAIN) == main


def test_mkinitcpio_kernels_where_a_module_is_not_loadable_everywhere():
    handoff = {"modules": {NEW: ALL3, "6.8.0-1-custom": ["vfio", "vfio_iommu_type1"]}, "files": [MODPROBE_CONF]}
    text = content(plan("mkinitcpio", handoff, {mkinitcpio.MAIN: V41}, "35"), mkinitcpio.MAIN)
    assert '\nMODULES=("vfio_pci?" vfio vfio_iommu_type1)\n' in text     # optional: built in (or missing) on one kernel
    assert plan("mkinitcpio", handoff, {mkinitcpio.MAIN: text}, "35")["files"][mkinitcpio.MAIN]["content"] == text


@pytest.mark.parametrize("main, version", [
    (V41.replace(" modconf ", " "), "41"),
    (V41.replace(" modconf ", " "), "35"),
    (V23.replace(" modconf ", " "), None),
])
def test_mkinitcpio_without_modconf_is_an_error(main, version):
    res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: main}, version)
    assert res["files"] == {}
    assert "has no modconf: without it /etc/modprobe.d is not in the image" in res["errors"][0]


def test_mkinitcpio_hooks_from_drop_ins_count():
    main = V41.replace(" modconf ", " ")
    dropins = {"/etc/mkinitcpio.conf.d/10-hooks.conf": "HOOKS+=(modconf)\n"}
    res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: main, mkinitcpio.DROPIN_DIR: "", **dropins})
    assert not res["errors"]
    res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V41, mkinitcpio.DROPIN_DIR: "", "/etc/mkinitcpio.conf.d/20.conf": "HOOKS=(base udev)\n"})
    assert "has no modconf" in res["errors"][0]


def test_mkinitcpio_systemd_without_base_and_later_drop_ins_warn():
    main = V41.replace("HOOKS=(base udev ", "HOOKS=(systemd ")
    current = {mkinitcpio.MAIN: main, mkinitcpio.DROPIN_DIR: "", "/etc/mkinitcpio.conf.d/zz-gpu.conf": "MODULES=(amdgpu)\n"}
    res = plan("mkinitcpio", BY_ADDRESS, current)
    assert "has systemd but not base: the image has no /bin/sh" in res["warnings"][0]
    assert res["warnings"][1].startswith("/etc/mkinitcpio.conf.d/zz-gpu.conf:1 sets MODULES= after")
    assert plan("mkinitcpio", BY_ID, current)["warnings"] == [res["warnings"][1]]     # no script: /bin/sh not needed


def test_mkinitcpio_unsafe_to_edit_in_place_is_an_error():
    for user in ("MODULES=($(cat /etc/mods))", "MODULES=(a) HOOKS=(base)"):
        res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V41.replace("MODULES=()", user)}, "35")
        assert res["files"] == {} and "cannot be edited safely" in res["errors"][0]
    assert "is missing" in plan("mkinitcpio", BY_ID, {})["errors"][0]


def test_mkinitcpio_switching_to_drop_in_removes_the_in_place_edit():
    edited = content(plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: V41}, "35"), mkinitcpio.MAIN)
    res = plan("mkinitcpio", BY_ID, {mkinitcpio.MAIN: edited, mkinitcpio.DROPIN_DIR: ""})
    assert res["files"][mkinitcpio.MAIN]["content"] == V41 and res["files"][mkinitcpio.DROPIN] is not None
    res = plan("mkinitcpio", REMOVED, applied({mkinitcpio.MAIN: edited, mkinitcpio.DROPIN_DIR: ""}, res))
    assert res["files"] == {mkinitcpio.MAIN: {"content": V41, "mode": 0o644}, mkinitcpio.DROPIN: None}


def test_mkinitcpio_parser():
    found = mkinitcpio.parse('A=(x "y z" \'w\')\nB="p q" # c\nC+=(r\n  # s\n  t)\nD=$x\n')
    assert [(a.name, a.append, a.start, a.end, a.syntax, a.items, a.tail_ok) for a in found] == [
        ("A", False, 0, 1, "array", ["x", "y z", "w"], True), ("B", False, 1, 2, "string", ["p", "q"], True),
        ("C", True, 2, 5, "array", ["r", "t"], True), ("D", False, 5, 6, "string", None, True)]
    assert mkinitcpio.evaluate(['HOOKS="base udev"\n', "HOOKS+=(modconf)\n"], "HOOKS") == ["base", "udev", "modconf"]


# ---- booster -------------------------------------------------------------------------------------------
EXAMPLE = data("booster.yaml")


def test_booster_merges_into_the_documented_example():
    res = assert_idempotent("booster", BY_ID, {booster.CONFIG: EXAMPLE})
    text = content(res, booster.CONFIG)
    assert text == EXAMPLE + f"{cfg.BEGIN}\n# {booster.NOTE_NEW}\nmodules_force_load: vfio,vfio_iommu_type1,vfio_pci\n{cfg.END}\n"
    assert res["warnings"] == [] and res["kernel_params"] == []      # booster reads the options lines of modprobe.d
    assert plan("booster", REMOVED, {booster.CONFIG: text})["files"][booster.CONFIG]["content"] == EXAMPLE


def test_booster_existing_list_is_merged_and_given_back():
    user = EXAMPLE.replace("compression: zstd\n", "modules_force_load: nvidia, vfio_pci # GPU first\ncompression: zstd\n")
    res = assert_idempotent("booster", BY_ID, {booster.CONFIG: user})
    text = content(res, booster.CONFIG)
    assert (f"{cfg.WAS}modules_force_load: nvidia, vfio_pci # GPU first\n{cfg.BEGIN}\n# {booster.NOTE}\n"
            f"modules_force_load: vfio,vfio_iommu_type1,vfio_pci,nvidia\n{cfg.END}\ncompression: zstd\n") in text
    assert plan("booster", REMOVED, {booster.CONFIG: text})["files"][booster.CONFIG]["content"] == user
    already = EXAMPLE + "modules_force_load: 'vfio,vfio_iommu_type1,vfio_pci,nvidia'\n"
    assert content(plan("booster", BY_ID, {booster.CONFIG: already}), booster.CONFIG) == already


def test_booster_file_created_when_missing():
    res = plan("booster", BY_ID, {booster.CONFIG: None})
    assert content(res, booster.CONFIG).startswith(cfg.BEGIN)
    assert plan("booster", REMOVED, {booster.CONFIG: None})["files"] == {booster.CONFIG: None}
    assert plan("booster", REMOVED, {booster.CONFIG: ""})["files"] == {booster.CONFIG: {"content": "", "mode": 0o644}}


def test_booster_devices_by_address_are_left_to_the_root_file_system():
    res = plan("booster", BY_ADDRESS, {booster.CONFIG: ""})
    assert "\nmodules_force_load: vfio,vfio_iommu_type1\n" in content(res, booster.CONFIG)
    assert "vfio_pci is not force-loaded" in res["warnings"][0]


def test_booster_kernels_and_plymouth():
    res = plan("booster", MIXED_KERNELS, {booster.CONFIG: "enable_plymouth: true\n"})
    assert "\nmodules_force_load: vfio,vfio_iommu_type1,vfio_pci\n" in content(res, booster.CONFIG)   # no vfio_virqfd: 6.8 lacks it
    assert "enables Plymouth" in res["warnings"][0]


@pytest.mark.parametrize("text", [
    "modules_force_load: |\n  vfio\n", "modules_force_load: [a, b]\n", "modules_force_load:\n  a,\n  b\n",
    "modules_force_load: a\nmodules_force_load: b\n"])
def test_booster_values_that_cannot_be_edited_line_by_line(text):
    res = plan("booster", BY_ID, {booster.CONFIG: text})
    assert res["files"] == {} and res["errors"]


# ---- commands and image names --------------------------------------------------------------------------
def test_regenerate_commands():
    assert cfg.regenerate_commands("initramfs-tools", [OLD, NEW], True) == [
        ["update-initramfs", "-u", "-k", OLD], ["update-initramfs", "-u", "-k", NEW]]
    assert cfg.regenerate_commands("dracut", ["6.8.9-300.fc40.x86_64"], True, "redhat") == [
        ["dracut", "--force", "--kver", "6.8.9-300.fc40.x86_64"]]
    assert cfg.regenerate_commands("dracut", [NEW], True, "debian") == [["dracut", "--force", f"/boot/initrd.img-{NEW}", NEW]]
    assert cfg.regenerate_commands("dracut", ["6.4.0-150600.23.7-default"], False, "suse") == [
        ["dracut", "--force", "--no-hostonly", "/boot/initrd-6.4.0-150600.23.7-default", "6.4.0-150600.23.7-default"]]
    assert cfg.regenerate_commands("mkinitcpio", ["6.8.9-arch1-1", "6.6.30-1-lts"], True, "arch") == [["mkinitcpio", "-P"]]
    assert cfg.regenerate_commands("booster", ["6.8.9-arch1-1"], True, "arch") == [["/usr/lib/booster/regenerate_images"]]
    assert cfg.regenerate_commands("booster", ["5.14.0-1"], True, "redhat") == [
        ["booster", "build", "--force", "--kernel-version", "5.14.0-1", "/boot/booster-5.14.0-1.img"]]


def test_image_paths_and_candidates():
    assert cfg.image_paths("initramfs-tools", [NEW], "debian") == {NEW: f"/boot/initrd.img-{NEW}"}
    assert cfg.image_paths("dracut", ["6.8.9-300.fc40.x86_64"], "redhat") == {"6.8.9-300.fc40.x86_64": "/boot/initramfs-6.8.9-300.fc40.x86_64.img"}
    assert cfg.image_paths("dracut", [NEW], "debian") == {NEW: f"/boot/initrd.img-{NEW}"}
    assert cfg.image_paths("mkinitcpio", ["6.8.9-arch1-1", "6.6.30-1-lts", "6.8.9-zen1-1-zen"], "arch") == {
        "6.8.9-arch1-1": "/boot/initramfs-linux.img", "6.6.30-1-lts": "/boot/initramfs-linux-lts.img",
        "6.8.9-zen1-1-zen": "/boot/initramfs-linux-zen.img"}
    assert cfg.image_paths("booster", ["6.6.30-1-lts"], "arch") == {"6.6.30-1-lts": "/boot/booster-linux-lts.img"}
    lts = cfg.image_candidates("mkinitcpio", "6.6.30-1-lts", "arch")
    assert lts["by_version"] is False and lts["paths"] == [
        "/boot/initramfs-linux-lts.img", "/boot/initramfs-linux.img", "/boot/initramfs-6.6-x86_64.img"]
    assert cfg.image_candidates("initramfs-tools", NEW)["by_version"] is True


def test_list_commands_and_inputs():
    image = "/boot/x.img"
    assert [cfg.list_command(g, image) for g in cfg.GENERATORS] == [
        ["lsinitramfs", image], ["lsinitrd", image], ["lsinitcpio", image], ["booster", "ls", image]]
    assert cfg.inputs("mkinitcpio")[:2] == [mkinitcpio.MAIN, mkinitcpio.DROPIN_DIR]
    with pytest.raises(ValueError, match="unknown initramfs generator"):
        cfg.list_command("genkernel", image)
