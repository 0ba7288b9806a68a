"""Typed config building: overrides, unknown keys, choices, kinds."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from threed.config import build, parse_overrides
from threed.errors import ThreedError


@dataclass
class Inner:
    size: int = 4
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = (0.0, 1.0)


@dataclass
class KindX:
    kind: Literal["x"] = "x"
    alpha: float = 1.0


@dataclass
class KindY:
    kind: Literal["y"] = "y"
    beta: int = 2


@dataclass
class Outer:
    name: str = "n"
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    rule: KindX | KindY = field(default_factory=KindX)
    limit: int | None = None


def test_builds_nested_and_coerces():
    cfg = build(Outer, {"inner": {"size": 8.0, "pair": [1, 2]}, "items": [{"mode": "b"}], "limit": 3})
    assert cfg.inner.size == 8 and isinstance(cfg.inner.size, int)
    assert cfg.inner.pair == (1.0, 2.0)
    assert cfg.items[0].mode == "b"
    assert cfg.limit == 3


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ThreedError) as err:
        build(Outer, {"inner": {"sise": 3}})
    msg = str(err.value)
    assert "inner.sise" in msg and "mode, pair, size" in msg


def test_literal_choice_is_named():
    with pytest.raises(ThreedError, match=r"inner.mode.*choose one of: a, b"):
        build(Outer, {"inner": {"mode": "c"}})


def test_wrong_type_is_named():
    with pytest.raises(ThreedError, match=r"inner.size"):
        build(Outer, {"inner": {"size": "big"}})
    with pytest.raises(ThreedError, match=r"expected 2 values at 'inner.pair'"):
        build(Outer, {"inner": {"pair": [1, 2, 3]}})


def test_union_dispatches_on_kind():
    assert isinstance(build(Outer, {"rule": {"kind": "y", "beta": 5}}).rule, KindY)
    assert build(Outer, {"rule": {"alpha": 0.5}}).rule == KindX(alpha=0.5)
    with pytest.raises(ThreedError, match="unknown kind 'z' at 'rule'; choose one of: x, y"):
        build(Outer, {"rule": {"kind": "z"}})
    with pytest.raises(ThreedError, match="rule.beta"):
        build(Outer, {"rule": {"kind": "x", "beta": 1}})


def test_overrides_parse_dotted_paths():
    over = parse_overrides(["inner.size=16", "name=hello", "limit=null"])
    cfg = build(Outer, over)
    assert cfg.inner.size == 16 and cfg.name == "hello" and cfg.limit is None
    with pytest.raises(ThreedError, match="KEY=VALUE"):
        parse_overrides(["inner.size"])


def test_an_empty_value_is_the_empty_string_for_text_and_null_where_null_is_allowed():
    """``key=`` is what a shell leaves of ``key=""``: text fields read it as "", optional fields as null."""
    cfg = build(Outer, parse_overrides(["name=", "limit="]))
    assert cfg.name == "" and cfg.limit is None
    assert build(Outer, parse_overrides(['name=""'])).name == ""  # the quoted form, as typed in the app's box
    for key, needs in (("inner.size", "an integer"), ("inner.mode", "one of: a, b"), ("inner.pair", "a list"),
                       ("rule", r"a mapping with a kind \(x, y\)"), ("items.0.size", "an integer")):
        with pytest.raises(ThreedError, match=rf"{key} has no value .*needs {needs}.*leave {key} out"):
            build(Outer, parse_overrides([f"{key}="]) if "items" not in key else {"items": [{"size": None}]})


def test_a_value_that_is_not_text_shows_the_quoting_that_keeps_it_text():
    with pytest.raises(ThreedError) as err:
        build(Outer, parse_overrides(["name=true"]))
    assert "'name=\"true\"'" in str(err.value)
    assert build(Outer, parse_overrides(['name="true"'])).name == "true"  # what the shell hands on from it


def test_nfsd_advice_to_set_the_negative_prompt_to_empty_can_be_followed_from_a_shell():
    """NFSD's unknown-word error says to set guidance.negative_prompt to "": a shell turns that into ``key=``."""
    from threed.recipe import load_recipe

    guidance = load_recipe("nfsd", ["stages.0.guidance.negative_prompt="]).stages[0].guidance
    guidance = guidance[0] if isinstance(guidance, list) else guidance  # one rule, or the list the registry makes
    assert guidance.kind == "nfsd" and guidance.negative_prompt == ""
    assert load_recipe("nfsd", ["stages.0.model="]).stages[0].model is None  # optional: back to the recipe's model
