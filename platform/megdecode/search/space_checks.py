"""The checks a search space makes as a whole, once each param spec has parsed.

`megdecode.search.space_file.load_space` parses each param on its own, then calls these:
the window bounds (floats on one grid, inside the stored epoch, tmin < tmax always
possible) and every config the space can build at its extremes and choices, so that a
bad combination fails before the first trial rather than in trial 37.
"""

from __future__ import annotations

from typing import Any

from megdecode.config import ConfigError
from megdecode.data.preprocess import PreprocessConfig
from megdecode.search.space import TMAX, TMIN, ParamSpec, SearchSpace, fit_config
from megdecode.train_config import FitConfig


def on_grid(span: float, step: float) -> bool:
    """Whether `span` is a whole number of `step`s, up to float rounding (1e-6 steps)."""
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-6


def check_window(space: SearchSpace, where: str) -> None:
    """Window params: floats on a grid inside the stored epoch, tmin < tmax always possible."""
    epoch = PreprocessConfig()
    specs = {p.key: p for p in space.params if p.key in (TMIN, TMAX)}
    for key, spec in specs.items():
        if spec.type != "float" or spec.step is None:
            raise ConfigError(
                f"{where}: {key}: a window bound must be a float with a step (e.g. 0.025 s)"
            )
        if spec.when:
            raise ConfigError(f"{where}: {key}: a window bound cannot be conditional")
        assert spec.low is not None and spec.high is not None
        if not on_grid(spec.low, spec.step):
            raise ConfigError(f"{where}: {key}: low={spec.low} is not on the {spec.step} s grid")
        if spec.low < epoch.tmin - 1e-9 or spec.high > epoch.tmax + 1e-9:
            raise ConfigError(
                f"{where}: {key}: [{spec.low}, {spec.high}] leaves the stored epoch [{epoch.tmin}, {epoch.tmax}] s"
            )
    if len(specs) == 1:
        ((key, spec),) = specs.items()
        assert spec.low is not None and spec.high is not None and spec.step is not None
        other = TMAX if key == TMIN else TMIN
        if other not in space.fixed:
            raise ConfigError(f"{where}: {key} is searched, so {other} must be searched or fixed")
        bound = float(space.fixed[other])
        if (key == TMIN and spec.high >= bound) or (
            key == TMAX and spec.high < bound + spec.step - 1e-9
        ):
            raise ConfigError(
                f"{where}: {key}: [{spec.low}, {spec.high}] leaves no window with fixed {other}={bound}"
            )
    if len(specs) == 2:
        lo, hi = specs[TMIN], specs[TMAX]
        assert lo.high is not None and hi.high is not None and lo.step is not None
        if lo.step != hi.step:
            raise ConfigError(
                f"{where}: {TMIN} and {TMAX} must share one step, got {lo.step} and {hi.step}"
            )
        if lo.high + lo.step > hi.high + 1e-9:
            raise ConfigError(
                f"{where}: {TMIN}: high={lo.high} leaves no tmax in ({TMIN}, {hi.high}]"
            )


def check_configs(space: SearchSpace, where: str) -> None:
    """Build every value alone, then the all-low, all-high and each-choice configs, now
    rather than in trial 37; a value alone names its key, a combination its label.
    A conditional key is built with its condition met, and left out where it is not."""
    lows = {p.key: p.extremes()[0] for p in space.params}
    highs = {p.key: p.extremes()[1] for p in space.params}
    if TMIN in lows and TMAX in lows:
        step = next(p.step for p in space.params if p.key == TMAX)
        lows[TMAX] = max(lows[TMAX], round(lows[TMIN] + step, 9))
    candidates = [("the lows / first choices", lows), ("the highs / last choices", highs)]
    for spec in space.params:
        if spec.type == "categorical":
            candidates += [
                (f"{spec.key}={c!r}", lows | _condition(spec) | {spec.key: c}) for c in spec.choices
            ]
    candidates = [(label, _drop_inactive(space, flat)) for label, flat in candidates]
    for key, value, flat in [(k, v, {k: v}) for k, v in space.fixed.items()] + [
        (p.key, v, _condition(p) | {p.key: v})
        for p in space.params
        for v in (*p.extremes(), *p.choices)
    ]:
        if key not in (TMIN, TMAX):  # a window bound alone may clash with the default other bound
            try:
                FitConfig.from_flat_dict(flat)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: {key}={value!r} is invalid: {exc}") from exc
    base = FitConfig()
    for label, flat in candidates:
        try:
            fit_config(base, space.fixed, flat, source=f"search space {space.name!r}")
        except ConfigError as exc:
            raise ConfigError(
                f"{where}: the config built from {label} is invalid: {exc.__cause__ or exc}"
            ) from exc


def _condition(spec: ParamSpec) -> dict[str, Any]:
    """The first allowed value of each key the spec is conditional on (empty if none)."""
    return {key: allowed[0] for key, allowed in spec.when}


def _drop_inactive(space: SearchSpace, flat: dict[str, Any]) -> dict[str, Any]:
    """`flat` without the conditional keys whose condition it does not meet."""
    values = dict(space.fixed) | flat
    inactive = {p.key for p in space.params if p.when and not p.active(values)}
    return {k: v for k, v in flat.items() if k not in inactive}
