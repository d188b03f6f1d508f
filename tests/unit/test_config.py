"""The flat-dict round trip every stage config relies on (MLflow params, Tune keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from megdecode.config import ConfigError, FlatConfig


@dataclass(frozen=True)
class Inner(FlatConfig):
    depth: int = 2
    rate: float = 0.1


@dataclass(frozen=True)
class Outer(FlatConfig):
    name: str = "a"
    window: tuple[float, float] = (-0.5, 1.0)
    picks: tuple[str, ...] = ("mag",)
    l_freq: float | None = 0.1
    on: bool = True
    inner: Inner = field(default_factory=Inner)


def test_round_trip_is_identity_and_flat() -> None:
    cfg = Outer(
        name="b",
        window=(0.0, 0.5),
        picks=("mag", "grad"),
        l_freq=None,
        on=False,
        inner=Inner(3, 0.2),
    )
    flat = cfg.to_flat_dict()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in flat.values())
    assert flat["inner.depth"] == 3
    assert Outer.from_flat_dict(flat) == cfg
    assert Outer.from_json(cfg.to_json()) == cfg


def test_partial_dict_keeps_defaults_and_coerces_strings() -> None:
    cfg = Outer.from_flat_dict({"inner.depth": "4", "on": "false", "window": "[0.1, 0.3]"})
    assert cfg.inner == Inner(depth=4, rate=0.1)
    assert cfg.on is False
    assert cfg.window == (0.1, 0.3)


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key 'dept'"):
        Outer.from_flat_dict({"dept": 1})
    with pytest.raises(ConfigError, match="inner.dept|dept"):
        Outer.from_flat_dict({"inner.dept": 1})
    with pytest.raises(ConfigError, match="unknown field"):
        Outer().replace(nmae="x")


def test_bad_values_are_errors() -> None:
    with pytest.raises(ConfigError, match="depth"):
        Outer.from_flat_dict({"inner.depth": 2.5})
    with pytest.raises(ConfigError, match="on"):
        Outer.from_flat_dict({"on": "maybe"})
