"""Search spaces: the shipped YAMLs load, bad files fail before any trial, samples are valid."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest

from megdecode.config import ConfigError
from megdecode.search.space import SearchSpace, fit_config, logged_keys
from megdecode.search.space_file import load_space
from megdecode.train_config import FitConfig

SPACES = Path(__file__).resolve().parents[3] / "search_spaces"
GRID = 0.025


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _samples(space: SearchSpace, n: int, seed: int = 0) -> list[dict]:
    """n define-by-run samples from a real TPE study, told a score so TPE leaves its warm-up."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=f"{space.mode}imize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
    )
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Optuna adjusting a range that is off the grid
        for i in range(n):
            trial = study.ask()
            flat = space.define_by_run(trial)
            assert flat is not None
            study.tell(trial, float(flat.get("train.tmax", 0.0)) + 0.01 * (i % 3))
            out.append(flat)
    return out


@pytest.mark.parametrize("name", ["paper", "windows", "smoke"])
def test_shipped_spaces_load_and_sample_valid_configs(name: str) -> None:
    space = load_space(SPACES / f"{name}.yaml")
    assert space.name == name and space.seeds >= 2 and space.mode in ("max", "min")
    assert space.fixed["train.max_epochs"] == space.max_epochs
    assert 1 <= space.grace_period <= space.max_epochs
    base = FitConfig(store="/s", latents_dir="/l")
    for flat in _samples(space, 60):
        cfg = fit_config(base, space.fixed, flat)
        assert cfg.store == "/s" and cfg.train.max_epochs == space.max_epochs
        for spec in space.params:
            if spec.key in flat:
                assert cfg.to_flat_dict()[spec.key] == flat[spec.key]


def test_paper_and_smoke_search_what_the_issue_asks() -> None:
    paper = {p.key: p for p in load_space(SPACES / "paper.yaml").params}
    for key in (
        "model.depth",
        "model.hidden_channels",
        "model.kernel_size",
        "model.dilation_period",
        "model.glu",
        "model.conv_dropout",
        "model.aggregation",
        "model.head_hidden",
        "loss.temperature_init",
        "loss.learn_temperature",
        "loss.lam",
        "train.tmin",
        "train.tmax",
        "train.lr",
        "train.batch_size",
        "train.latent",
    ):
        assert key in paper, key
    assert set(paper["train.latent"].choices) == {"handcrafted", "clip-vision"}
    smoke = load_space(SPACES / "smoke.yaml")
    assert smoke.fixed["train.latent"] == "twin-lowlevel" and smoke.max_epochs <= 20
    assert specs_hi(smoke, "loss.lam") < 1.0  # the generator needs a trained MSE head
    specs = {p.key: p for p in smoke.params}
    assert (specs["model.hidden_channels"].low, specs["model.hidden_channels"].high) == (32, 96)
    assert (specs["model.depth"].low, specs["model.depth"].high) == (1, 2)


def specs_hi(space, key: str) -> float:
    return float(next(p for p in space.params if p.key == key).high)


def test_paper_suggests_attention_heads_only_for_attention_pooling() -> None:
    space = load_space(SPACES / "paper.yaml")
    base = FitConfig(store="/s", latents_dir="/l")
    kinds = set()
    for flat in _samples(space, 60, seed=2):
        kinds.add(flat["model.aggregation"])
        assert ("model.attention_heads" in flat) == (flat["model.aggregation"] == "attention"), flat
        fit_config(base, space.fixed, flat)  # every sampled head count divides F'
    assert kinds == {"mean", "affine", "attention"}


def test_windows_are_on_the_grid_inside_the_epoch_and_ordered() -> None:
    space = load_space(SPACES / "windows.yaml")
    assert {p.key for p in space.params} == {"train.tmin", "train.tmax"}
    seen = set()
    for flat in _samples(space, 100, seed=1):
        tmin, tmax = flat["train.tmin"], flat["train.tmax"]
        assert -0.5 <= tmin < tmax <= 1.0
        for t in (tmin, tmax):
            assert abs(t / GRID - round(t / GRID)) < 1e-9 and t == round(t, 3)
        seen.add((tmin, tmax))
    assert len(seen) > 20  # the sampler explores, it does not stick to one window


def test_tmax_may_come_first_in_the_file(tmp_path: Path) -> None:
    space = load_space(
        _write(
            tmp_path,
            """
params:
  train.tmax: {type: float, low: 0.1, high: 0.3, step: 0.1}
  train.tmin: {type: float, low: 0.0, high: 0.2, step: 0.1}
""",
        )
    )
    assert [p.key for p in space.params] == ["train.tmin", "train.tmax"]
    for flat in _samples(space, 40):
        assert flat["train.tmin"] < flat["train.tmax"]


def test_conditional_params_appear_only_when_their_condition_holds(tmp_path: Path) -> None:
    space = load_space(
        _write(
            tmp_path,
            """
params:
  model.aggregation: {type: categorical, choices: [mean, affine, attention]}
  model.head_dropout: {type: float, low: 0.0, high: 0.5, when: {model.aggregation: attention}}
  loss.learn_temperature: {type: bool}
  loss.max_logit_scale:
    type: float
    low: 20
    high: 100
    when: {loss.learn_temperature: true, model.aggregation: [affine, attention]}
""",
        )
    )
    samples = _samples(space, 80)
    for flat in samples:
        assert ("model.head_dropout" in flat) == (flat["model.aggregation"] == "attention")
        expected = flat["loss.learn_temperature"] and flat["model.aggregation"] != "mean"
        assert ("loss.max_logit_scale" in flat) == expected
    assert any("model.head_dropout" in f for f in samples)
    assert any("model.head_dropout" not in f for f in samples)
    # an absent conditional param keeps the base config's value
    without = next(f for f in samples if "model.head_dropout" not in f)
    base = FitConfig().replace(model=FitConfig().model.replace(head_dropout=0.3))
    assert fit_config(base, space.fixed, without).model.head_dropout == 0.3


def test_unknown_key_is_an_error_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "params:\n  model.dept: {type: int, low: 1, high: 3}\n")
    with pytest.raises(ConfigError, match=r"model\.dept.*did you mean model\.depth") as info:
        load_space(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="train.lrate"):
        load_space(_write(tmp_path, "fixed:\n  train.lrate: 0.1\n"))
    with pytest.raises(ConfigError, match="model.aggregaton"):
        load_space(
            _write(
                tmp_path,
                """
params:
  model.head_dropout: {type: float, low: 0.0, high: 0.5, when: {model.aggregaton: attention}}
""",
            )
        )
    with pytest.raises(ConfigError, match="num_sample"):
        load_space(_write(tmp_path, "num_sample: 3\n"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{type: int, low: 3, high: 3}", "low=3.0 must be < high"),
        ("{type: float, low: 0.0, high: 1.0, log: true}", "log scale needs low > 0"),
        ("{type: float, low: 0.0, high: 1.0, step: 0.3}", "does not divide"),
        ("{type: categorical, choices: []}", "non-empty list of choices"),
        ("{type: uniform, low: 0, high: 1}", "unknown type 'uniform'"),
        ("{type: float, low: 0.0, hi: 1.0}", "unknown spec field"),
        ("{type: float, low: zero, high: 1.0}", "low must be a number"),
        ("{type: int, low: 1, high: 4, step: 0.5}", "must be integers"),
    ],
)
def test_bad_ranges_are_errors_naming_the_key(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_space(_write(tmp_path, f"params:\n  model.conv_dropout: {spec}\n"))
    assert "model.conv_dropout" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # dataclass validation, caught by the extreme configs before any trial
        (
            "params:\n  model.aggregation: {type: categorical, choices: [mean, attentoin]}\n",
            "attentoin",
        ),
        ("params:\n  loss.lam: {type: float, low: 0.5, high: 1.5}\n", "lam"),
        ("fixed:\n  model.depth: many\n", "depth"),
        # windows
        (
            "params:\n  train.tmin: {type: float, low: -0.6, high: 0.0, step: 0.025}\n"
            "  train.tmax: {type: float, low: 0.1, high: 0.5, step: 0.025}\n",
            "leaves the stored epoch",
        ),
        (
            "params:\n  train.tmin: {type: float, low: 0.0, high: 0.5, step: 0.025}\n"
            "  train.tmax: {type: float, low: 0.1, high: 0.5, step: 0.025}\n",
            "leaves no tmax",
        ),
        ("params:\n  train.tmin: {type: float, low: 0.0, high: 0.5}\n", "float with a step"),
        (
            "params:\n  train.tmax: {type: float, low: 0.2, high: 0.5, step: 0.1}\n",
            "must be searched or fixed",
        ),
        (
            "fixed:\n  train.tmin: 0.5\nparams:\n  train.tmax: {type: float, low: 0.2, high: 0.5, step: 0.1}\n",
            "leaves no window",
        ),
        # keys a search space must not touch, and top-level values
        ("params:\n  model.n_channels: {type: int, low: 1, high: 4}\n", "set from the data"),
        ("fixed:\n  train.seed: 3\n", "seeds"),
        ("metric: test/top5\n", "not reported every epoch"),
        ("metric: val/clip_loss\nmode: max\n", "wrong way"),
        ("max_epochs: 5\ngrace_period: 6\n", "grace_period"),
        ("max_epochs: 5\nfixed:\n  train.max_epochs: 8\n", "disagrees"),
        ("seeds: 0\n", "seeds must be an integer >= 1"),
        (
            "fixed:\n  model.depth: 2\nparams:\n  model.depth: {type: int, low: 1, high: 3}\n",
            "both fixed and searched",
        ),
        (
            "params:\n  model.head_dropout: {type: float, low: 0.0, high: 0.5, when: {model.aggregation: attention}}\n"
            "  model.aggregation: {type: categorical, choices: [mean, attention]}\n",
            "neither an earlier param",
        ),
        (
            "params:\n  model.aggregation: {type: categorical, choices: [mean, affine]}\n"
            "  model.head_dropout: {type: float, low: 0.0, high: 0.5, when: {model.aggregation: attention}}\n",
            "takes",
        ),
    ],
)
def test_invalid_spaces_fail_at_load_time(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(_write(tmp_path, text))


def test_defaults_and_fit_config_merging(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, "fixed:\n  train.latent: twin-category\n"))
    assert (space.name, space.seeds, space.metric, space.mode) == ("space", 3, "val/top5", "max")
    base = FitConfig(store="/data/store")
    cfg = fit_config(base, space.fixed, {"model.depth": 4})
    assert (cfg.store, cfg.train.latent, cfg.model.depth) == ("/data/store", "twin-category", 4)
    with pytest.raises(ConfigError, match="space 'space'.*model.dept"):
        fit_config(base, space.fixed, {"model.dept": 4}, source="search space 'space'")
    with pytest.raises(ConfigError, match="tmin"):
        fit_config(base, space.fixed, {"train.tmin": 0.5, "train.tmax": 0.1})
    assert load_space(_write(tmp_path, "metric: val/clip_loss\n")).mode == "min"
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_space(tmp_path / "nowhere.yaml")


def test_fit_config_layers_in_order_then_seed_and_device() -> None:
    base = FitConfig(store="/s")
    cfg = fit_config(
        base, {"model.depth": 2, "train.lr": 1e-3}, {"model.depth": 3}, seed=4, device="cuda"
    )
    assert (cfg.store, cfg.model.depth, cfg.train.lr, cfg.train.seed, cfg.train.device) == (
        "/s",
        3,
        1e-3,
        4,
        "cuda",
    )
    assert fit_config(base) == base  # no layer, no seed: the base itself
    with pytest.raises(ConfigError, match="trial config: invalid config"):
        fit_config(base, {"train.monitor": "val/acc"})


def test_logged_params_rebuild_the_trials_config_for_a_seed() -> None:
    """MLflow logs a trial's flat config as strings (train.seed dropped) next to its seeds."""
    trial = fit_config(FitConfig(store="/s"), {"model.depth": 3, "model.head_hidden": 64}, seed=0)
    params = {k: str(v) for k, v in trial.to_flat_dict().items() if k != "train.seed"} | {
        "seeds": "[0, 1]"
    }
    assert fit_config(FitConfig(), logged_keys(params), seed=1) == trial.replace(
        train=trial.train.replace(seed=1)
    )
    with pytest.raises(ConfigError, match="no FitConfig key"):
        logged_keys({"seeds": "[0, 1]"})


def test_on_grid_tolerates_float_rounding_only() -> None:
    from megdecode.search.space_checks import on_grid

    assert on_grid(0.3, 0.1)  # 2.9999999999999996 steps
    assert on_grid(-0.475, 0.025)
    assert not on_grid(0.31, 0.1)
