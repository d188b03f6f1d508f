"""Search spaces: a validated, Optuna define-by-run space over FitConfig keys.

`SearchSpace` is what a search runs: its params (`ParamSpec`, suggested in order by
`define_by_run`), fixed keys, seeds, metric and ASHA settings. `fit_config` is the one
merge of base, fixed and trial keys into a FitConfig: the space file's checks, the trials
and ``megdecode train --from-run`` all call it. Optuna is imported where used, so a Tune
worker importing this module does not pay for it.

The YAML format and every check `load_space` makes: `megdecode.search.space_file`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from megdecode.config import ConfigError
from megdecode.train_config import FitConfig

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

TMIN, TMAX = "train.tmin", "train.tmax"
# Set by `train.build_model` from the data, or by the seed loop: searching them is a mistake.
RESERVED = ("model.n_channels", "model.n_times", "model.n_subjects", "model.out_dim", "train.seed")
# Metrics reported every epoch (ASHA and Optuna need one per step), with their direction.
EPOCH_METRICS = {
    "val/top5": "max",
    "val/loss": "min",
    "val/clip_loss": "min",
    "val/mse_loss": "min",
    "train/loss": "min",
    "train/clip_loss": "min",
    "train/mse_loss": "min",
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searched key. `when` holds (key, allowed values) pairs, all of which must hold."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the condition holds for the values suggested so far (and the fixed ones)."""
        return all(key in values and values[key] in allowed for key, allowed in self.when)

    def suggest(self, trial: optuna.trial.Trial, low: float | None = None) -> Any:
        """Ask the trial for a value; `low` overrides the lower bound (dynamic window ranges)."""
        if self.type == "bool":
            return trial.suggest_categorical(self.key, [False, True])
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        lo = self.low if low is None else low
        assert lo is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(lo), int(self.high), step=int(self.step or 1), log=self.log
            )
        value = trial.suggest_float(
            self.key, float(lo), float(self.high), step=self.step, log=self.log
        )
        return round(value, 9) if self.step else value

    def extremes(self) -> tuple[Any, Any]:
        """(low or first choice, high or last choice), for the early config checks."""
        if self.type == "bool":
            return False, True
        if self.type == "categorical":
            return self.choices[0], self.choices[-1]
        return self.low, self.high


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated search space; `define_by_run` is OptunaSearch's `space`."""

    name: str
    path: str
    seeds: int = 3
    metric: str = "val/top5"
    mode: str = "max"
    num_samples: int = 10
    max_concurrent: int = 2
    time_budget_s: float | None = None
    max_epochs: int = 100
    grace_period: int = 10
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    params: tuple[ParamSpec, ...] = ()

    def define_by_run(self, trial: optuna.trial.Trial) -> dict[str, Any] | None:
        """Suggest every active param in order; return the trial's whole flat config.

        The returned dict holds the fixed values and the suggested values (stepped floats
        rounded to their grid); OptunaSearch merges it over the raw suggestions, so a Tune
        trial's config is exactly this dict.
        """
        values: dict[str, Any] = dict(self.fixed)
        for spec in self.params:
            if not spec.active(values):
                continue
            low = None
            if spec.key == TMAX and TMIN in values:
                assert spec.low is not None and spec.step is not None
                low = max(spec.low, round(values[TMIN] + spec.step, 9))
            values[spec.key] = spec.suggest(trial, low=low)
        return values


def fit_config(
    base: FitConfig,
    *layers: Mapping[str, Any],
    seed: int | None = None,
    device: str | None = None,
    source: str = "trial config",
) -> FitConfig:
    """`base`, then each layer of flat keys in order (a space's fixed keys, a trial's keys).

    `seed` and `device`, when given, replace train.seed and train.device (per seed and per
    machine, never searched). Unknown keys and invalid values raise `ConfigError` naming `source`.
    """
    merged = base.to_flat_dict()
    unknown = sorted({key for layer in layers for key in layer} - set(merged))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} (not FitConfig fields)")
    for layer in layers:
        merged |= dict(layer)
    try:
        cfg = FitConfig.from_flat_dict(merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid config: {exc}") from exc
    per_run = {k: v for k, v in (("seed", seed), ("device", device)) if v is not None}
    return cfg.replace(train=cfg.train.replace(**per_run)) if per_run else cfg


def logged_keys(params: Mapping[str, str]) -> dict[str, Any]:
    """The FitConfig keys among a trial's MLflow parent-run params (strings; "None" is None):
    `fit_config(FitConfig(), logged_keys(params), seed=s)` rebuilds seed s of the trial."""
    known = FitConfig().to_flat_dict()
    flat = {k: (None if v == "None" else v) for k, v in params.items() if k in known}
    if not flat:
        raise ConfigError("these params hold no FitConfig key; is this a trial's parent run?")
    return flat
