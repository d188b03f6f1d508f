"""A search-space YAML file -> a `SearchSpace`, with every check made before a trial starts.

A search can run for hours on a cluster, so everything a YAML file can get wrong (a
misspelt key, an empty range, a window that ends before it starts) is checked by
`load_space` before the first trial starts, and every error names the key and the file.
This module parses the file and each param spec; the checks of the space as a whole (the
window, every config it can build) are `megdecode.search.space_checks`.

YAML format (keys are the flat keys of `FitConfig().to_flat_dict()`, e.g. "model.depth")::

    name: paper            # experiment name; default: the file's stem
    seeds: 3               # seeds per trial (seed values 0 .. seeds-1); default 3
    metric: val/top5       # per-epoch metric the search optimises; default val/top5
    mode: max              # max | min; default: the metric's natural direction
    num_samples: 40        # trials; default 10
    max_concurrent: 2      # trials at once; default 2
    time_budget_s: 3600    # optional wall-clock budget of the whole search
    max_epochs: 100        # ASHA's max_t; also sets train.max_epochs
    grace_period: 10       # ASHA's grace period (epochs); default max(1, max_epochs // 10)
    fixed:                 # constants of every trial
      train.latent: handcrafted
    params:                # searched keys, suggested in this order
      model.depth: {type: int, low: 1, high: 4}
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
      model.aggregation: {type: categorical, choices: [mean, affine, attention]}
      loss.learn_temperature: {type: bool}
      loss.max_logit_scale:  # conditional: only suggested when the condition holds
        {type: float, low: 50, high: 100, when: {loss.learn_temperature: true}}

Param spec fields: ``type`` (int | float | categorical | bool), ``low``/``high``
(inclusive), ``step`` (grid; ``high - low`` must be a multiple), ``log`` (log scale,
``low > 0``, not with a step > 1), ``choices`` (categorical), ``when``
(``{key: value or [values]}``; every key must be an earlier param or a fixed key). A
conditional param that is not suggested keeps the base config's value.

Windows: ``train.tmin``/``train.tmax`` must be floats on a grid (``step``, e.g. 0.025 s)
inside the stored epoch. When both are searched, tmin is suggested first over its range,
then tmax over ``[max(tmax.low, tmin + step), tmax.high]`` (Optuna allows such a dynamic
float range), so every sampled window has tmin < tmax; `load_space` requires
``tmin.high + step <= tmax.high`` so that range is never empty. Stepped floats are
rounded to the grid (Optuna returns e.g. -0.47500000000000003).

Keys that are set from the data (``model.n_channels`` ...) and ``train.seed`` (set per
seed from ``seeds``) cannot be searched or fixed.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from megdecode.config import ConfigError
from megdecode.search.space import EPOCH_METRICS, RESERVED, TMAX, TMIN, ParamSpec, SearchSpace
from megdecode.search.space_checks import check_configs, check_window, on_grid
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)

_TOP_LEVEL = (
    "name",
    "seeds",
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "time_budget_s",
    "max_epochs",
    "grace_period",
    "fixed",
    "params",
)
_SPEC_FIELDS = ("type", "low", "high", "step", "log", "choices", "when")
_TYPES = ("int", "float", "categorical", "bool")


def load_space(path: str | Path) -> SearchSpace:
    """Read and fully validate a search-space YAML file (format in the module docstring)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no search space at {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(doc) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {unknown}; known: {', '.join(_TOP_LEVEL)}"
        )
    known = FitConfig().to_flat_dict()
    fixed = {str(k): v for k, v in (doc.get("fixed") or {}).items()}
    for key in fixed:
        _check_key(key, known, where, "fixed")
    params: list[ParamSpec] = []
    for key, raw in (doc.get("params") or {}).items():
        _check_key(key, known, where, "params")
        if key in fixed:
            raise ConfigError(f"{where}: {key!r} is both fixed and searched")
        params.append(_parse_spec(str(key), raw, where, fixed, params))
    params = _window_order(params)
    space = _top_level(doc, where, fixed, tuple(params), path.stem)
    check_window(space, where)
    check_configs(space, where)
    logger.debug(
        "search space %s: %d params, %d fixed, %d samples x %d seeds",
        space.name,
        len(params),
        len(fixed),
        space.num_samples,
        space.seeds,
    )
    return space


def _check_key(key: Any, known: dict[str, Any], where: str, section: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(str(key), list(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"{where}: unknown key {key!r} in {section} (not a FitConfig field){hint}"
        )
    if key in RESERVED:
        raise ConfigError(
            f"{where}: {key!r} in {section} is set from the data or by `seeds`, not by a search space"
        )


def _number(value: Any, key: str, name: str, where: str) -> float | None:
    """YAML reads 1e-4 (no dot) as a string: accept numeric strings, refuse the rest."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {key}: {name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {key}: {name} must be a number, got {value!r}") from exc


def _parse_spec(
    key: str, raw: Any, where: str, fixed: dict[str, Any], earlier: list[ParamSpec]
) -> ParamSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping with a type, got {raw!r}")
    extra = sorted(set(raw) - set(_SPEC_FIELDS))
    if extra:
        raise ConfigError(
            f"{where}: {key}: unknown spec field(s) {extra}; known: {', '.join(_SPEC_FIELDS)}"
        )
    kind = raw.get("type")
    if kind not in _TYPES:
        raise ConfigError(
            f"{where}: {key}: unknown type {kind!r}; expected one of {', '.join(_TYPES)}"
        )
    low, high = (
        _number(raw.get("low"), key, "low", where),
        _number(raw.get("high"), key, "high", where),
    )
    step, log = _number(raw.get("step"), key, "step", where), bool(raw.get("log", False))
    choices = tuple(raw.get("choices") or ())
    if kind in ("int", "float"):
        if low is None or high is None:
            raise ConfigError(f"{where}: {key}: {kind} needs low and high")
        if low >= high:
            raise ConfigError(f"{where}: {key}: low={low} must be < high={high}")
        if log and low <= 0:
            raise ConfigError(f"{where}: {key}: log scale needs low > 0, got {low}")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: {key}: step must be > 0, got {step}")
        if log and step is not None and (kind == "float" or step != 1):
            raise ConfigError(f"{where}: {key}: log and step cannot be combined")
        if kind == "int" and any(
            v is not None and not float(v).is_integer() for v in (low, high, step)
        ):
            raise ConfigError(f"{where}: {key}: int bounds and step must be integers")
        if step is not None and not on_grid(high - low, step):
            raise ConfigError(
                f"{where}: {key}: step={step} does not divide high-low={high - low:g}"
            )
        if choices:
            raise ConfigError(f"{where}: {key}: choices are only for categorical params")
    else:
        if any(raw.get(f) is not None for f in ("low", "high", "step")) or log:
            raise ConfigError(
                f"{where}: {key}: low/high/step/log are only for int and float params"
            )
        if kind == "categorical":
            if not choices:
                raise ConfigError(f"{where}: {key}: categorical needs a non-empty list of choices")
            if len(set(map(repr, choices))) != len(choices):
                raise ConfigError(f"{where}: {key}: duplicate choices {list(choices)}")
        elif choices:
            raise ConfigError(f"{where}: {key}: a bool param takes no choices")
    return ParamSpec(
        key,
        kind,
        low,
        high,
        step,
        log,
        choices,
        _parse_when(key, raw.get("when"), where, fixed, earlier),
    )


def _parse_when(
    key: str, raw: Any, where: str, fixed: dict[str, Any], earlier: list[ParamSpec]
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where}: {key}: when must be a non-empty mapping {{key: value or [values]}}"
        )
    by_key = {p.key: p for p in earlier}
    out = []
    for other, allowed in raw.items():
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if other in by_key:
            spec = by_key[other]
            possible = (False, True) if spec.type == "bool" else spec.choices
            if possible and any(v not in possible for v in values):
                raise ConfigError(
                    f"{where}: {key}: when {other} in {list(values)}, but {other} takes {list(possible)}"
                )
        elif other not in fixed:
            raise ConfigError(
                f"{where}: {key}: when refers to {other!r}, which is neither an earlier param nor fixed"
            )
        out.append((str(other), values))
    return tuple(out)


def _window_order(params: list[ParamSpec]) -> list[ParamSpec]:
    """tmax after tmin, whatever the file's order, since tmax's range depends on tmin."""
    keys = [p.key for p in params]
    if TMIN in keys and TMAX in keys and keys.index(TMAX) < keys.index(TMIN):
        tmax = params.pop(keys.index(TMAX))
        params.insert([p.key for p in params].index(TMIN) + 1, tmax)
    return params


def _top_level(
    doc: dict[str, Any], where: str, fixed: dict[str, Any], params: tuple[ParamSpec, ...], stem: str
) -> SearchSpace:
    def integer(name: str, default: int, minimum: int = 1) -> int:
        value = doc.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
        return value

    metric = str(doc.get("metric", "val/top5"))
    if metric not in EPOCH_METRICS:
        raise ConfigError(
            f"{where}: metric {metric!r} is not reported every epoch; use one of {', '.join(EPOCH_METRICS)}"
        )
    mode = str(doc.get("mode", EPOCH_METRICS[metric]))
    if mode not in ("max", "min"):
        raise ConfigError(f"{where}: mode must be max or min, got {mode!r}")
    if mode != EPOCH_METRICS[metric]:
        raise ConfigError(
            f"{where}: mode {mode!r} for {metric} would optimise it the wrong way ({EPOCH_METRICS[metric]})"
        )
    max_epochs = integer(
        "max_epochs", int(fixed.get("train.max_epochs", FitConfig().train.max_epochs))
    )
    if "train.max_epochs" in fixed and int(fixed["train.max_epochs"]) != max_epochs:
        raise ConfigError(
            f"{where}: max_epochs={max_epochs} disagrees with fixed train.max_epochs={fixed['train.max_epochs']}"
        )
    if any(p.key == "train.max_epochs" for p in params):
        raise ConfigError(
            f"{where}: 'train.max_epochs' is set by max_epochs (ASHA's max_t), not searched"
        )
    grace = integer("grace_period", max(1, max_epochs // 10))
    if grace > max_epochs:
        raise ConfigError(f"{where}: grace_period={grace} exceeds max_epochs={max_epochs}")
    budget = _number(doc.get("time_budget_s"), "time_budget_s", "value", where)
    if budget is not None and budget <= 0:
        raise ConfigError(f"{where}: time_budget_s must be > 0, got {budget}")
    return SearchSpace(
        name=str(doc.get("name") or stem),
        path=where,
        seeds=integer("seeds", 3),
        metric=metric,
        mode=mode,
        num_samples=integer("num_samples", 10),
        max_concurrent=integer("max_concurrent", 2),
        time_budget_s=budget,
        max_epochs=max_epochs,
        grace_period=grace,
        fixed=fixed | {"train.max_epochs": max_epochs},
        params=params,
    )
