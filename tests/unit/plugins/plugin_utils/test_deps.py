"""API compatibility and dependency resolution: which plugins load, in which order, and why not."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import _deps
from ansible_collections.exliar.vfio.plugins.plugin_utils._deps import Resolution, check_api, resolve
from ansible_collections.exliar.vfio.plugins.plugin_utils.api import (
    API_VERSION,
    PluginDependency,
    PluginError,
    PluginMetadata,
)


def meta(name, version="1.0.0", deps=(), api=(1, 0), tested=()):
    """deps: "b", "b>=1.0" or ("b", ">=1.0", optional)."""
    dependencies = []
    for dep in deps:
        if isinstance(dep, tuple):
            dependencies.append(PluginDependency(*dep))
        else:
            name_, op, rest = dep.partition(">=")
            dependencies.append(PluginDependency(name_, op + rest if op else ""))
    return PluginMetadata(name=name, version=version, api_version=api, dependencies=dependencies,
                          tested_api=list(tested))


def plugins(*metas):
    return {m.name: m for m in metas}


# ---- API compatibility ------------------------------------------------------------------

def test_same_api_is_compatible():
    assert check_api(meta("a", api=(1, 0)), ours=(1, 0)) == []


def test_lower_minor_of_same_major_is_compatible():
    assert check_api(meta("a", api=(1, 0)), ours=(1, 3)) == []


def test_default_is_our_api_version():
    assert check_api(meta("a", api=API_VERSION)) == []


def test_higher_minor_is_refused():
    with pytest.raises(PluginError) as info:
        check_api(meta("a", version="2.1.0", api=(1, 4)), ours=(1, 2))
    msg = str(info.value)
    assert "'a' 2.1.0 needs plugin API 1.4" in msg and "provides only 1.2" in msg
    assert "update exliar.vfio" in msg
    assert info.value.plugin == "a"


@pytest.mark.parametrize("theirs, ours", [((2, 0), (1, 0)), ((0, 9), (1, 0)), ((1, 0), (2, 5))])
def test_other_major_is_refused(theirs, ours):
    with pytest.raises(PluginError) as info:
        check_api(meta("a", api=theirs), ours=ours)
    assert "different major version" in str(info.value)
    assert f"API {theirs[0]}.{theirs[1]}" in str(info.value)


def test_untested_combination_warns():
    warnings = check_api(meta("a", api=(1, 0), tested=[(1, 0), (1, 1)]), ours=(1, 2))
    assert len(warnings) == 1
    assert "untested combination" in warnings[0]
    assert "1.0, 1.1" in warnings[0] and "provides 1.2" in warnings[0]


def test_tested_combination_does_not_warn_in_any_spelling():
    # tuples from load_manifest, lists after a trip through host facts, strings from hand-made metadata
    for tested in ([(1, 2)], [[1, 2]], ["1.2"]):
        assert check_api(meta("a", api=(1, 0), tested=tested), ours=(1, 2)) == []


def test_api_version_as_string_or_list():
    assert check_api(meta("a", api="1.0"), ours=(1, 1)) == []
    assert check_api(meta("a", api=[1, 1]), ours=(1, 1)) == []


# ---- ordering ---------------------------------------------------------------------------

def test_independent_plugins_load_alphabetically():
    res = resolve(plugins(meta("zeta"), meta("alpha"), meta("mid")))
    assert res == Resolution(order=["alpha", "mid", "zeta"], rejected={}, warnings=[])


def test_dependencies_load_first():
    res = resolve(plugins(meta("app", deps=["zlib>=1.0"]), meta("zlib", "1.2.0"), meta("beta")))
    assert res.order == ["beta", "zlib", "app"]
    assert res.rejected == {}


def test_chain_loads_in_dependency_order():
    res = resolve(plugins(meta("a", deps=["b"]), meta("b", deps=["c"]), meta("c")))
    assert res.order == ["c", "b", "a"]


def test_diamond():
    res = resolve(plugins(meta("top", deps=["left", "right"]), meta("left", deps=["base"]),
                          meta("right", deps=["base"]), meta("base")))
    assert res.order == ["base", "left", "right", "top"]
    assert res.rejected == {} and res.warnings == []


def test_present_optional_dependency_is_ordered_first():
    res = resolve(plugins(meta("a", deps=[("perf", ">=0.5", True)]), meta("perf", "0.6.0")))
    assert res.order == ["perf", "a"]
    assert res.warnings == []


def test_order_is_stable_whatever_the_input_order():
    metas = [meta("d", deps=["a"]), meta("c"), meta("b", deps=["a"]), meta("a")]
    assert resolve(plugins(*metas)).order == resolve(plugins(*reversed(metas))).order == ["a", "b", "c", "d"]


# ---- rejections -------------------------------------------------------------------------

def test_missing_required_dependency():
    res = resolve(plugins(meta("a", deps=["x>=1.0"]), meta("b")))
    assert res.order == ["b"]
    assert res.rejected == {"a": "needs x >=1.0 which is not installed"}


def test_version_mismatch():
    res = resolve(plugins(meta("a", deps=["x>=2.0"]), meta("x", "1.4.0")))
    assert res.order == ["x"]
    assert res.rejected == {"a": "needs x >=2.0 but x 1.4.0 is installed"}


def test_prerelease_of_installed_plugin_satisfies_the_range():
    res = resolve(plugins(meta("a", deps=["x>=1.0"]), meta("x", "1.1.0rc1")))
    assert res.order == ["x", "a"]


def test_compound_specifier():
    res = resolve(plugins(meta("a", deps=[("x", ">=1.0,<2", False)]), meta("x", "2.0.0")))
    assert res.rejected == {"a": "needs x >=1.0,<2 but x 2.0.0 is installed"}


def test_cycle_of_two():
    res = resolve(plugins(meta("a", deps=["b"]), meta("b", deps=["a"]), meta("c")))
    assert res.order == ["c"]
    assert res.rejected == {"a": "is part of a dependency cycle: a -> b -> a",
                            "b": "is part of a dependency cycle: a -> b -> a"}


def test_cycle_of_three():
    res = resolve(plugins(meta("b", deps=["c"]), meta("c", deps=["a"]), meta("a", deps=["b"])))
    assert res.order == []
    for name in "abc":
        assert res.rejected[name] == "is part of a dependency cycle: a -> b -> c -> a"


def test_dependent_of_a_cycle_is_rejected_with_the_chain():
    res = resolve(plugins(meta("a", deps=["b"]), meta("b", deps=["a"]), meta("user", deps=["a"])))
    assert res.rejected["user"] == "needs a, which cannot load (user -> a: a is part of a dependency cycle: a -> b -> a)"


def test_transitive_rejection_names_the_chain():
    res = resolve(plugins(meta("a", deps=["b"]), meta("b", deps=["c"]), meta("c", deps=["x>=1"]), meta("ok")))
    assert res.order == ["ok"]
    assert res.rejected == {
        "c": "needs x >=1 which is not installed",
        "b": "needs c, which cannot load (b -> c: c needs x >=1 which is not installed)",
        "a": "needs b, which cannot load (a -> b -> c: c needs x >=1 which is not installed)",
    }


def test_missing_optional_dependency_is_a_warning():
    res = resolve(plugins(meta("a", deps=[("perf", ">=0.5", True)])))
    assert res.order == ["a"]
    assert res.rejected == {}
    assert len(res.warnings) == 1
    assert "'a'" in res.warnings[0] and "optional dependency perf >=0.5 is not installed" in res.warnings[0]


def test_mismatched_optional_dependency_is_a_warning_and_still_ordered():
    res = resolve(plugins(meta("a", deps=[("perf", ">=2", True)]), meta("perf", "1.0.0")))
    assert res.order == ["perf", "a"]
    assert res.rejected == {}
    assert "perf 1.0.0 is installed" in res.warnings[0]


def test_rejected_optional_dependency_is_a_warning():
    res = resolve(plugins(meta("a", deps=[("perf", "", True)]), meta("perf", deps=["x"])))
    assert res.order == ["a"]
    assert res.rejected == {"perf": "needs x which is not installed"}
    assert "optional dependency perf cannot load" in res.warnings[0]


def test_optional_edge_closing_a_cycle_is_dropped_with_a_warning():
    res = resolve(plugins(meta("a", deps=[("b", "", True)]), meta("b", deps=["a"])))
    assert res.order == ["a", "b"]
    assert res.rejected == {}
    assert "b loads after a" in res.warnings[0]


def test_plugins_rejected_elsewhere_reject_their_dependents():
    res = resolve(plugins(meta("a", deps=["b"]), meta("b"), meta("c")),
                  rejected={"b": "needs plugin API 2.0"})
    assert res.order == ["c"]
    assert res.rejected["b"] == "needs plugin API 2.0"
    assert res.rejected["a"] == "needs b, which cannot load (a -> b: b needs plugin API 2.0)"


def test_invalid_specifier_in_hand_made_metadata_rejects_the_plugin():
    res = resolve(plugins(meta("a", deps=[("b", "=>1", False)]), meta("b")))
    assert "invalid version requirement '=>1'" in res.rejected["a"]
    assert res.order == ["b"]


def test_without_packaging_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_deps, "HAS_PACKAGING", False)
    with pytest.raises(PluginError, match="pip install packaging"):
        resolve(plugins(meta("a")))
