"""The MEG twin: a simulated THINGS-MEG-like study written as a real BIDS dataset.

`simulate(TwinConfig.preset("tiny"), out_dir)` draws procedural stimuli
(`megdecode.twin.stimuli`), a THINGS-like design (`design`), per-subject sources with
known latencies and tuning (`sources`) on a sphere head inside the real CTF-275
helmet (`helmet`), adds realistic background and artefacts (`noise`), and writes
BIDS (+ stimuli, sourcedata tables and the ground truth) with `bids_writer`. The same
reader and preprocessing then run on the twin and on OpenNeuro ds004212.

Every number that shapes the signal is a `TwinConfig` field (`megdecode.twin.config`) and is written to
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

from megdecode.data.distractors import COLUMNS as DISTRACTOR_COLUMNS
from megdecode.data.distractors import DISTRACTOR_TABLE
from megdecode.logs import progress
from megdecode.twin import bids_writer as twin_bids
from megdecode.twin import budget as twin_budget
from megdecode.twin import design as twin_design
from megdecode.twin import helmet, stimuli
from megdecode.twin import noise as twin_noise
from megdecode.twin import sources as twin_sources
from megdecode.twin.config import TwinConfig

logger = logging.getLogger(__name__)

read_ground_truth = twin_bids.read_ground_truth  # re-exported: the twin's public API


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
    n_distractors: int  # never-shown images under stimuli/images_distractors
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
    cats = stimuli.make_categories(
        cfg.n_categories, cfg.n_groups, cfg.semantic_dim, cfg.semantic_within_sd, rng
    )
    test_nrs = np.sort(
        rng.choice(cats["category_nr"].to_numpy(), cfg.n_test_categories, replace=False)
    )
    images = stimuli.make_image_table(
        cats, cfg.n_exp_per_category, test_nrs, cfg.n_catch_images, cfg.hue_sd, rng
    )
    by_nr = cats.set_index("category_nr")
    sem_cols = [f"sem_{d}" for d in range(cfg.semantic_dim)]
    sem = np.zeros((len(images), cfg.semantic_dim))
    real = images["category_nr"].to_numpy() > 0
    sem[real] = by_nr.loc[images.loc[real, "category_nr"], sem_cols].to_numpy()
    sem /= np.sqrt(1 + cfg.semantic_within_sd**2)  # unit variance per dimension
    return cats, images, stimuli.low_level_features(images), sem


def make_distractors(cfg: TwinConfig, categories: pd.DataFrame) -> pd.DataFrame:
    """The twin's never-shown distractor images (`stimuli.make_distractor_table`).

    Their own random stream: adding distractors leaves every shown image, trial and
    sample of a twin with the same seed unchanged."""
    return stimuli.make_distractor_table(categories, cfg.n_distractors, cfg.hue_sd, rng_for(cfg, 9))


def write_distractor_list(distractors: pd.DataFrame, stimuli_root: Path) -> Path:
    """``<stimuli_root>/distractors.tsv``: what the latents stage encodes next to shown images."""
    path = stimuli_root / DISTRACTOR_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    table = distractors.assign(shown=False).reindex(columns=list(DISTRACTOR_COLUMNS))
    table.to_csv(path, sep="\t", index=False)
    return path


def _session_info(cfg: TwinConfig, geom: helmet.SensorGeometry, s: int, ses: int):
    rng = rng_for(cfg, 7, s, ses)
    shift = np.clip(rng.normal(0, cfg.head_shift_mm / 1000, 3), -0.008, 0.008)
    rot = np.deg2rad(rng.normal(0, cfg.head_rotation_deg, 3))
    info = helmet.make_info(geom, cfg.sfreq, helmet.head_transform(geom, shift, rot), cfg.line_freq)
    return info


def _leadfields(info, model: SubjectModel) -> dict[str, np.ndarray]:
    """Gain matrices (C, n) per source set, one forward computation for all of them."""
    parts = {g: np.c_[model.sources[g].rr, model.sources[g].nn] for g in twin_sources.GROUPS}
    parts.update(model.nuisance)
    stacked = np.concatenate(list(parts.values()))
    gain = helmet.leadfield(info, stacked[:, :3], stacked[:, 3:])
    bounds = np.cumsum([0] + [len(v) for v in parts.values()])
    return {k: gain[:, a:b] for k, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True)}


def _synthesize_run(cfg, model, gains, trials, drives, n_samples, key, ch_names):
    """(C + 1, n_samples) float32 run data in T (last row: UPPT001 stim) + artefact truth."""
    sig_gain = np.concatenate([gains[g] for g in twin_sources.GROUPS], axis=1)
    activity = twin_sources.source_activity(
        cfg, model.sources, trials, drives, n_samples, rng_for(cfg, 4, *key)
    )
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
        data[-1, s : s + width] = 64
    return data, art_truth


def _simulate_subject(
    cfg: TwinConfig,
    s: int,
    root: Path,
    images: pd.DataFrame,
    low: np.ndarray,
    sem: np.ndarray,
    population: dict[str, twin_sources.GroupSources],
) -> dict:
    """Write all runs and the sample attributes of subject index `s`; returns its truth."""
    geom = helmet.ctf272_geometry()
    ch_names = list(geom.ch_names)
    rng = rng_for(cfg, 6, s)
    model = SubjectModel(
        label=f"BIGMEG{s + 1}",
        sources=twin_sources.subject_sources(cfg, population, rng),
        nuisance=twin_noise.nuisance_sources(cfg, rng),
        alpha_freq_hz=float(cfg.alpha_freq_hz + 0.7 * rng.standard_normal()),
    )
    drives = {
        g: twin_sources.image_drive(cfg, g, model.sources[g], low, sem) for g in twin_sources.GROUPS
    }
    schedule = twin_design.schedule_subject(
        images, cfg.n_sessions, cfg.n_runs, cfg.catch_fraction, rng_for(cfg, 2, s)
    )
    sessions, runs, all_trials = {}, {}, []
    gains: dict = {}
    keys = [(ses, run) for ses in range(cfg.n_sessions) for run in range(cfg.n_runs)]
    for ses, run in progress(keys, f"twin {model.label} runs"):
        if run == 0:  # new session: new head position, new forward
            info = _session_info(cfg, geom, s, ses)
            gains = {"info": info, **_leadfields(info, model)}
            sessions[f"{ses + 1:02d}"] = {
                "dev_head_t": np.round(info["dev_head_t"]["trans"], 6).tolist()
            }
        run_trials = schedule[(schedule["session_nr"] == ses + 1) & (schedule["run_nr"] == run + 1)]
        trials, n_samples = twin_design.add_timing(
            run_trials,
            cfg.sfreq,
            cfg.image_duration_s,
            cfg.isi_mean_s,
            cfg.isi_jitter_s,
            cfg.run_lead_s,
            cfg.run_tail_s,
            rng_for(cfg, 3, s, ses, run),
        )
        if n_samples > 3600 * cfg.sfreq:
            logger.warning(
                "run %d.%d of %s lasts %.0f min: too many images per run?",
                ses + 1,
                run + 1,
                model.label,
                n_samples / cfg.sfreq / 60,
            )
        data, art = _synthesize_run(
            cfg, model, gains, trials, drives, n_samples, (s, ses, run), ch_names
        )
        events = twin_design.events_table(trials, images, cfg.image_duration_s)
        name = twin_bids.write_run(
            root, cfg, gains["info"], data, events, model.label, ses + 1, run + 1
        )
        runs[name] = {"n_samples": n_samples, **art}
        all_trials.append(trials)
    twin_bids.write_sample_attributes(root, s + 1, all_trials, images)
    truth = {
        "signal_scale_nAm": float(model.scale or 0.0) * 1e9,
        "alpha_freq_hz": model.alpha_freq_hz,
        "sessions": sessions,
        "sources": {g: src.to_json() for g, src in model.sources.items()},
        "nuisance_sources": {k: np.round(v, 6).tolist() for k, v in model.nuisance.items()},
    }
    return {
        "label": model.label,
        "truth": truth,
        "runs": runs,
        "n_trials": int(sum(len(t) for t in all_trials)),
    }


def _write_stimuli(
    images: pd.DataFrame, cats: pd.DataFrame, root: Path, size: int, n_jobs: int
) -> None:
    if n_jobs <= 1 or len(images) < 500:
        stimuli.write_images(images, cats, root, size)
        return
    chunks = np.array_split(np.arange(len(images)), n_jobs)
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [
            pool.submit(stimuli.write_images, images.iloc[c], cats, root, size) for c in chunks
        ]:
            future.result()


def simulate(
    cfg: TwinConfig,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    max_memory_bytes: float | None = None,
) -> TwinSummary:
    """Build the twin BIDS dataset under `out_dir` (created; existing files overwritten).

    n_jobs > 1 renders stimuli and simulates subjects in parallel worker processes
    (spawned, so safe next to threads); the output is identical to n_jobs=1.
    Runs are simulated and written one at a time (per worker); a config whose longest run
    would not fit `max_memory_bytes` (default: the memory available now) raises
    `twin.budget.TwinMemoryError` naming the estimate, before anything is written.
    """
    t0 = time.perf_counter()
    n_parallel = min(n_jobs, cfg.n_subjects) if n_jobs > 1 else 1
    twin_budget.check_run_memory(cfg, max_memory_bytes, n_parallel)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    geom = helmet.ctf272_geometry()
    cats, images, low, sem = make_stimuli(cfg)
    distractors = make_distractors(cfg, cats)
    _write_stimuli(
        pd.concat([images, distractors], ignore_index=True),
        cats,
        root / "stimuli",
        cfg.image_size,
        n_jobs,
    )
    write_distractor_list(distractors, root / "stimuli")
    population = twin_sources.anatomy(cfg, low.shape[1], sem.shape[1])
    args = [(cfg, s, root, images, low, sem, population) for s in range(cfg.n_subjects)]
    if n_jobs > 1 and cfg.n_subjects > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(n_jobs, cfg.n_subjects), mp_context=ctx) as pool:
            futures = [pool.submit(_simulate_subject, *a) for a in args]
            results = [f.result() for f in progress(futures, "twin subjects")]
    else:
        results = [_simulate_subject(*a) for a in args]
    twin_bids.write_ground_truth(
        root,
        cfg,
        cats,
        pd.concat([images.assign(shown=True), distractors.assign(shown=False)], ignore_index=True),
        {r["label"]: r["truth"] for r in results},
        {k: v for r in results for k, v in r["runs"].items()},
        geom,
    )
    twin_bids.write_dataset_files(root)
    summary = TwinSummary(
        root=str(root),
        n_subjects=cfg.n_subjects,
        n_sessions=cfg.n_sessions,
        n_runs=cfg.n_runs,
        n_trials=sum(r["n_trials"] for r in results),
        n_channels=len(geom.ch_names),
        n_images=len(images),
        n_distractors=len(distractors),
        n_categories=len(cats),
        bytes_on_disk=twin_bids.bytes_under(root),
        seconds=time.perf_counter() - t0,
    )
    logger.info("twin built: %s", summary)
    return summary
