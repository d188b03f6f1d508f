"""The MEG twin: a simulated THINGS-MEG-like study written as a real BIDS dataset.

`simulate(TwinConfig.preset("tiny"), out_dir)` draws procedural stimuli
(`megdecode.data.stimuli`), a THINGS-like design (`twin_design`), per-subject sources with
known latencies and tuning (`twin_sources`) on a sphere head inside the real CTF-275
helmet (`sensors`), adds realistic background and artefacts (`twin_noise`), and writes
BIDS (+ stimuli, sourcedata tables and the ground truth) with `twin_bids`. The same
reader and preprocessing then run on the twin and on OpenNeuro ds004212.

Every number that shapes the signal is a `TwinConfig` field and is written to
sourcedata/twin/ground_truth.json; nothing downstream may assume the defaults.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.config import ConfigError, FlatConfig
from megdecode.data import sensors, stimuli, twin_bids, twin_design, twin_noise, twin_sources
from megdecode.logs import progress

logger = logging.getLogger(__name__)

read_ground_truth = twin_bids.read_ground_truth  # re-exported: the twin's public API


@dataclass(frozen=True)
class TwinConfig(FlatConfig):
    """Everything the twin simulates; defaults are literature-typical, sizes are `tiny`."""

    seed: int = 0
    # design (THINGS-MEG: 4 subjects x 12 sessions x 10 runs, 1854 categories x 12 exp images,
    # 200 test images shown once per session, ~9% catch trials)
    n_subjects: int = 2
    n_sessions: int = 2
    n_runs: int = 2
    n_categories: int = 12
    n_groups: int = 4  # superordinate groups (one shape family each), at most 8
    n_exp_per_category: int = 5
    n_test_categories: int = 4  # each gets one test image; its exp images go to test_large
    n_catch_images: int = 4
    catch_fraction: float = 0.08
    image_duration_s: float = 0.5
    isi_mean_s: float = 1.0  # fixation after the image: U(mean - jitter, mean + jitter)
    isi_jitter_s: float = 0.2
    run_lead_s: float = 2.0  # recording before the first onset / after the last offset
    run_tail_s: float = 2.0
    # stimuli
    image_size: int = 64  # pixels (square RGB PNG)
    semantic_dim: int = 16
    semantic_within_sd: float = 0.5  # category spread around its group centroid (centroid sd 1)
    hue_sd: float = 0.06  # image hue spread around its category's typical hue (turns)
    # recording
    sfreq: float = 300.0  # THINGS-MEG records at 1200 Hz; the reader resamples to 120
    line_freq: float = 60.0  # THINGS-MEG was recorded in the US
    # stimulus-locked responses (latencies: peak after onset; offset: after image offset)
    early_latency_s: float = 0.13
    late_latency_s: float = 0.25
    offset_latency_s: float = 0.17
    early_width_s: float = 0.025  # sd of the Gaussian peak
    late_width_s: float = 0.04
    offset_width_s: float = 0.035
    rebound: float = 0.3  # relative size of the slower opposite-sign lobe after each peak
    early_amp: float = 1.0  # relative strength of each group's sources
    late_amp: float = 0.8
    offset_amp: float = 0.6
    early_mix_low: float = 1.0  # weight of low-level features in the drive
    early_mix_sem: float = 0.0  # weight of the semantic embedding in the drive
    late_mix_low: float = 0.3
    late_mix_sem: float = 1.0
    offset_mix_low: float = 0.6
    offset_mix_sem: float = 0.4
    early_feature_gain: float = 1.5  # feature-driven modulation relative to the constant part
    late_feature_gain: float = 0.8
    offset_feature_gain: float = 0.6
    tuning: str = "saturating"  # linear | rectified | saturating (rectified + tanh)
    tuning_saturation: float = 1.5  # drive (in sd) where "saturating" bends over
    snr: float = 0.2  # single-trial RMS(stimulus-locked signal) / RMS(brain background + alpha)
    latency_jitter_s: float = 0.015  # per trial and group (sd)
    amplitude_jitter: float = 0.3  # sd of the log amplitude, per trial and group
    # source anatomy (head frame; directions from the sphere origin, mirrored across x)
    n_sources_per_group: int = 8
    source_radius_m: float = 0.058
    source_spread_m: float = 0.008
    source_latency_sd_s: float = 0.01
    early_direction: tuple[float, float, float] = (0.2, -1.0, 0.15)
    late_direction: tuple[float, float, float] = (0.7, -0.45, -0.35)
    offset_direction: tuple[float, float, float] = (0.6, -0.55, 0.55)
    # subject-to-subject and session-to-session variability
    subject_position_sd_m: float = 0.004
    subject_gain_sd: float = 0.25
    subject_latency_sd_s: float = 0.01
    subject_tuning_mix: float = 0.3  # share of tuning-weight variance that is subject-specific
    head_shift_mm: float = 2.0  # per session, sd per axis
    head_rotation_deg: float = 1.5
    # background and artefacts (sensor-level amplitudes in fT)
    n_background_sources: int = 60
    background_ft: float = 300.0
    background_exponent: float = 1.0  # power ~ 1/f^beta
    alpha_ft: float = 150.0
    alpha_freq_hz: float = 10.0  # subject peak frequency ~ N(alpha_freq_hz, 0.7)
    alpha_erd_depth: float = 0.6
    alpha_erd_latency_s: float = 0.2
    alpha_erd_duration_s: float = 0.8
    sensor_noise_ft_sqrt_hz: float = 7.0
    line_noise_ft: float = 60.0
    drift_ft: float = 1500.0
    blink_rate_per_min: float = 8.0
    blink_ft: float = 1500.0
    cardiac_ft: float = 150.0
    heart_rate_hz: float = 1.1
    bad_channel: str = "MRO11-1609"
    bad_channel_mode: str = "noisy"  # noisy | flat | none
    bad_channel_noise_ft: float = 3000.0
    mark_bad: bool = False  # THINGS-MEG does not mark it; the pipeline drops it by name

    def __post_init__(self) -> None:
        """Refuse impossible configs at construction, before anything is written."""
        checks = {
            "tuning": self.tuning in ("linear", "rectified", "saturating"),
            "bad_channel_mode": self.bad_channel_mode in ("noisy", "flat", "none"),
            "n_groups": 1 <= self.n_groups <= len(stimuli.FAMILIES) and self.n_groups <= self.n_categories,
            "n_test_categories": 0 <= self.n_test_categories <= self.n_categories,
            "catch_fraction": 0.0 <= self.catch_fraction < 0.5,
            "sfreq": self.sfreq >= 100.0,
            "isi_jitter_s": 0.0 <= self.isi_jitter_s < self.isi_mean_s,
            "n_subjects": min(self.n_subjects, self.n_sessions, self.n_runs) >= 1,
            "snr": self.snr >= 0.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid TwinConfig field(s) {bad}: {[getattr(self, k) for k in bad]}")

    @classmethod
    def preset(cls, size: str, seed: int = 0) -> TwinConfig:
        """tiny: tests (~150 trials, ~80 MB, seconds); demo: ~3000 trials, ~1.2 GB, ~1 min;
        full: one THINGS-MEG subject (12 sessions x 10 runs, ~27k trials, 1200 Hz, ~50 GB).

        demo raises `snr` to 0.6: it has ~35x fewer trials per subject than THINGS-MEG,
        and the demo must show decoders learning in minutes (see DESIGN.md section 5).
        """
        if size == "tiny":
            return cls(seed=seed)
        if size == "demo":
            return cls(seed=seed, n_subjects=4, n_sessions=4, n_runs=2, n_categories=100,
                       n_groups=8, n_exp_per_category=6, n_test_categories=20,
                       n_catch_images=10, image_size=96, sfreq=240.0, snr=0.6)
        if size == "full":
            return cls(seed=seed, n_subjects=1, n_sessions=12, n_runs=10, n_categories=1854,
                       n_groups=8, n_exp_per_category=12, n_test_categories=200,
                       n_catch_images=100, image_size=96, sfreq=1200.0)
        raise ValueError(f"unknown twin preset {size!r}; choose tiny, demo or full")


@dataclass
class TwinSummary:
    """What `simulate` built (all counts over the whole dataset)."""

    root: str
    n_subjects: int
    n_sessions: int
    n_runs: int  # runs per session
    n_trials: int
    n_channels: int  # MEG channels (excluding the stim channel)
    n_images: int  # distinct images shown (exp + test + catch)
    n_categories: int
    bytes_on_disk: int
    seconds: float


def rng_for(cfg: TwinConfig, *key: int) -> np.random.Generator:
    """Independent, order-free random stream per (purpose, subject, session, run)."""
    return np.random.default_rng([cfg.seed, *key])


@dataclass
class SubjectModel:
    label: str
    sources: dict[str, twin_sources.GroupSources]
    nuisance: dict[str, np.ndarray]  # name -> (n, 6) rr | nn, head frame
    alpha_freq_hz: float
    scale: float | None = None  # A.m per unit source activity, set by SNR calibration


def make_stimuli(cfg: TwinConfig) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """The twin's categories, image table, low-level features (N, 11) and semantic
    embeddings (N, D; zeros for catch images), as the simulator drives its sources with
    them: a pure function of the config's seed."""
    rng = rng_for(cfg, 8)
    cats = stimuli.make_categories(cfg.n_categories, cfg.n_groups, cfg.semantic_dim,
                                   cfg.semantic_within_sd, rng)
    test_nrs = np.sort(rng.choice(cats["category_nr"].to_numpy(), cfg.n_test_categories, replace=False))
    images = stimuli.make_image_table(cats, cfg.n_exp_per_category, test_nrs,
                                      cfg.n_catch_images, cfg.hue_sd, rng)
    by_nr = cats.set_index("category_nr")
    sem_cols = [f"sem_{d}" for d in range(cfg.semantic_dim)]
    sem = np.zeros((len(images), cfg.semantic_dim))
    real = images["category_nr"].to_numpy() > 0
    sem[real] = by_nr.loc[images.loc[real, "category_nr"], sem_cols].to_numpy()
    sem /= np.sqrt(1 + cfg.semantic_within_sd**2)  # unit variance per dimension
    return cats, images, stimuli.low_level_features(images), sem


def _session_info(cfg: TwinConfig, geom: sensors.SensorGeometry, s: int, ses: int):
    rng = rng_for(cfg, 7, s, ses)
    shift = np.clip(rng.normal(0, cfg.head_shift_mm / 1000, 3), -0.008, 0.008)
    rot = np.deg2rad(rng.normal(0, cfg.head_rotation_deg, 3))
    info = sensors.make_info(geom, cfg.sfreq, sensors.head_transform(geom, shift, rot), cfg.line_freq)
    return info


def _leadfields(info, model: SubjectModel) -> dict[str, np.ndarray]:
    """Gain matrices (C, n) per source set, one forward computation for all of them."""
    parts = {g: np.c_[model.sources[g].rr, model.sources[g].nn] for g in twin_sources.GROUPS}
    parts.update(model.nuisance)
    stacked = np.concatenate(list(parts.values()))
    gain = sensors.leadfield(info, stacked[:, :3], stacked[:, 3:])
    bounds = np.cumsum([0] + [len(v) for v in parts.values()])
    return {k: gain[:, a:b] for k, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True)}


def _synthesize_run(cfg, model, gains, trials, drives, n_samples, key, ch_names):
    """(C + 1, n_samples) float32 run data in T (last row: UPPT001 stim) + artefact truth."""
    sig_gain = np.concatenate([gains[g] for g in twin_sources.GROUPS], axis=1)
    activity = twin_sources.source_activity(cfg, model.sources, trials, drives, n_samples,
                                            rng_for(cfg, 4, *key))
    samples = trials["sample"].to_numpy()
    if model.scale is None:  # calibrate once per subject, on its first run
        brain_rms = np.hypot(cfg.background_ft, cfg.alpha_ft) * twin_noise.FT
        window = twin_sources.response_window_mask(cfg, samples, n_samples)
        model.scale = cfg.snr * brain_rms / twin_noise.rms(sig_gain @ activity[:, window])
    data = np.empty((len(ch_names) + 1, n_samples), dtype=np.float32)
    meg = data[:-1]
    meg[:] = (sig_gain * model.scale) @ activity
    rng = rng_for(cfg, 5, *key)
    meg += twin_noise.background(cfg, gains["background"], n_samples, rng)
    meg += twin_noise.alpha(cfg, gains["alpha"], model.alpha_freq_hz, samples, n_samples, rng)
    meg += twin_noise.sensor_noise(cfg, len(ch_names), n_samples, rng)
    meg += twin_noise.line_and_drift(cfg, len(ch_names), n_samples, rng)
    art, art_truth = twin_noise.artefacts(cfg, gains["blink"], gains["cardiac"], n_samples, rng)
    meg += art
    twin_noise.break_channel(cfg, meg, ch_names, rng)
    data[-1] = 0.0
    width = max(2, int(round(0.01 * cfg.sfreq)))  # 10 ms trigger pulse, value 64
    for s in samples:
        data[-1, s: s + width] = 64
    return data, art_truth


def _simulate_subject(cfg: TwinConfig, s: int, root: Path, images: pd.DataFrame,
                      low: np.ndarray, sem: np.ndarray,
                      population: dict[str, twin_sources.GroupSources]) -> dict:
    """Write all runs and the sample attributes of subject index `s`; returns its truth."""
    geom = sensors.ctf272_geometry()
    ch_names = list(geom.ch_names)
    rng = rng_for(cfg, 6, s)
    model = SubjectModel(label=f"BIGMEG{s + 1}",
                         sources=twin_sources.subject_sources(cfg, population, rng),
                         nuisance=twin_noise.nuisance_sources(cfg, rng),
                         alpha_freq_hz=float(cfg.alpha_freq_hz + 0.7 * rng.standard_normal()))
    drives = {g: twin_sources.image_drive(cfg, g, model.sources[g], low, sem)
              for g in twin_sources.GROUPS}
    schedule = twin_design.schedule_subject(images, cfg.n_sessions, cfg.n_runs,
                                            cfg.catch_fraction, rng_for(cfg, 2, s))
    sessions, runs, all_trials = {}, {}, []
    gains: dict = {}
    keys = [(ses, run) for ses in range(cfg.n_sessions) for run in range(cfg.n_runs)]
    for ses, run in progress(keys, f"twin {model.label} runs"):
        if run == 0:  # new session: new head position, new forward
            info = _session_info(cfg, geom, s, ses)
            gains = {"info": info, **_leadfields(info, model)}
            sessions[f"{ses + 1:02d}"] = {"dev_head_t": np.round(info["dev_head_t"]["trans"], 6).tolist()}
        run_trials = schedule[(schedule["session_nr"] == ses + 1) & (schedule["run_nr"] == run + 1)]
        trials, n_samples = twin_design.add_timing(
            run_trials, cfg.sfreq, cfg.image_duration_s, cfg.isi_mean_s, cfg.isi_jitter_s,
            cfg.run_lead_s, cfg.run_tail_s, rng_for(cfg, 3, s, ses, run))
        if n_samples > 3600 * cfg.sfreq:
            logger.warning("run %d.%d of %s lasts %.0f min: too many images per run?",
                           ses + 1, run + 1, model.label, n_samples / cfg.sfreq / 60)
        data, art = _synthesize_run(cfg, model, gains, trials, drives, n_samples, (s, ses, run),
                                    ch_names)
        events = twin_design.events_table(trials, images, cfg.image_duration_s)
        name = twin_bids.write_run(root, cfg, gains["info"], data, events, model.label,
                                   ses + 1, run + 1)
        runs[name] = {"n_samples": n_samples, **art}
        all_trials.append(trials)
    twin_bids.write_sample_attributes(root, s + 1, all_trials, images)
    truth = {"signal_scale_nAm": float(model.scale or 0.0) * 1e9, "alpha_freq_hz": model.alpha_freq_hz,
             "sessions": sessions,
             "sources": {g: src.to_json() for g, src in model.sources.items()},
             "nuisance_sources": {k: np.round(v, 6).tolist() for k, v in model.nuisance.items()}}
    return {"label": model.label, "truth": truth, "runs": runs,
            "n_trials": int(sum(len(t) for t in all_trials))}


def _write_stimuli(images: pd.DataFrame, cats: pd.DataFrame, root: Path, size: int,
                   n_jobs: int) -> None:
    if n_jobs <= 1 or len(images) < 500:
        stimuli.write_images(images, cats, root, size)
        return
    chunks = np.array_split(np.arange(len(images)), n_jobs)
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(stimuli.write_images, images.iloc[c], cats, root, size) for c in chunks]:
            future.result()


def simulate(cfg: TwinConfig, out_dir: str | Path, *, n_jobs: int = 1) -> TwinSummary:
    """Build the twin BIDS dataset under `out_dir` (created; existing files overwritten).

    n_jobs > 1 renders stimuli and simulates subjects in parallel worker processes
    (spawned, so safe next to threads); the output is identical to n_jobs=1.
    """
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    geom = sensors.ctf272_geometry()
    cats, images, low, sem = make_stimuli(cfg)
    _write_stimuli(images, cats, root / "stimuli", cfg.image_size, n_jobs)
    population = twin_sources.anatomy(cfg, low.shape[1], sem.shape[1])
    args = [(cfg, s, root, images, low, sem, population) for s in range(cfg.n_subjects)]
    if n_jobs > 1 and cfg.n_subjects > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(n_jobs, cfg.n_subjects), mp_context=ctx) as pool:
            futures = [pool.submit(_simulate_subject, *a) for a in args]
            results = [f.result() for f in progress(futures, "twin subjects")]
    else:
        results = [_simulate_subject(*a) for a in args]
    twin_bids.write_ground_truth(root, cfg, cats, images, {r["label"]: r["truth"] for r in results},
                                 {k: v for r in results for k, v in r["runs"].items()}, geom)
    twin_bids.write_dataset_files(root)
    summary = TwinSummary(
        root=str(root), n_subjects=cfg.n_subjects, n_sessions=cfg.n_sessions, n_runs=cfg.n_runs,
        n_trials=sum(r["n_trials"] for r in results), n_channels=len(geom.ch_names),
        n_images=len(images), n_categories=len(cats), bytes_on_disk=twin_bids.bytes_under(root),
        seconds=time.perf_counter() - t0)
    logger.info("twin built: %s", summary)
    return summary
