"""Reconstruction evaluation: decode the test MEG, generate on Ray, score, log to MLflow.

For the small test set of a brain-module bundle (a folder or ``models:/name@alias``):

    test MEG windows -> brain module (MSE head) -> to_latent_space -> generator -> images

The MSE outputs are z-scored (`pred_stats`) with the bundle's stored prediction
statistics ("bundle", the default: its validation predictions, what `/v1/reconstruct`
uses; the drawn trials are also decoded as the app decodes them, one window per forward
of the folded model, so a single trial's latent here is, bit for bit, the one the app
draws for that window, and no reconstruction depends on the other test trials; the
images match too where batched sampling rounds as one-image sampling does, as on the
demo's generator: 20/20, benchmarks/pred_stats.py) or over each decoded set itself ("set":
the single trials over all single trials, the averages over all averages; transductive,
and noisy for a few images, but it puts every set at the training latents' spread,
averages included, which the bundle's single-trial statistics leave narrower). The table's
``pred_stats`` column says which a row used.

Rows of the table (each scored against the seen images):

    single    one reconstruction per trial (real time)
    averaged  predictions averaged over an image's repetitions, per subject, then decoded
    oracle    the ground-truth latents of the seen images: the generator's own ceiling
    random    latents drawn from N(train mean, train std) per dimension: the floor

Generation runs as Ray Data ``map_batches`` on an actor pool (`_GenerateActor`), each
actor loading the generator once; with GPUs in the cluster each actor takes a fraction
of one (`gpu_fraction`), else one CPU. Every sample's seed is fixed by its row, so the
images do not depend on how Ray batches them.

Next to the image metrics, `megdecode.generate.fidelity` scores the latents themselves
(per-dimension r of each row's latents vs the truth; column ``latent_r`` of the table is
its mean, the figure and CSV hold every dimension, plus the large test set's single
trials, scored but not drawn): it separates what the brain module failed to decode from
what the generator failed to draw.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from megdecode.config import FlatConfig
from megdecode.data import bids
from megdecode.data import store as epoch_store
from megdecode.evaluation.retrieval import average_by_image
from megdecode.generate.grid import rank_scores, save_grid
from megdecode.generate.pipeline import GenerateConfig, LatentGenerator
from megdecode.generate.postprocess import to_latent_space
from megdecode.latents.cache import open_rgb
from megdecode.latents.targets import load_target, split_target

logger = logging.getLogger(__name__)

KINDS = ("single", "averaged", "oracle", "random")
PRED_STATS = ("bundle", "set")
NOT_SCALED = "not decoded"  # pred_stats of the oracle and random rows (no MSE output to scale)


@dataclass(frozen=True)
class GenEvalConfig(FlatConfig):
    bundle: str = ""  # bundle folder or models:/name@alias
    generator: str = ""  # generator folder (LatentGenerator.from_dir)
    bids_root: str = ""  # where the images are (root/stimuli unless images_root)
    images_root: str = ""
    store: str = ""  # default: the store the bundle was trained on
    latents_dir: str = ""  # default: the bundle's latents folder
    out: str = ""  # local output folder
    max_images: int = 0  # 0 = every test image; else the first K image ids (smoke runs)
    metric_weights: str = ""  # folder of metric networks (features.py); "" = PixCorr/SSIM only
    actors: int = 0  # generation actors; 0 = one per CPU (or per GPU fraction)
    gpu_fraction: float = 0.25  # of a GPU per actor when the cluster has GPUs
    batch_size: int = 16
    grid_per_group: int = 4
    rank_by: str = "averaged"  # which row's scores rank the grid
    kinds: tuple[str, ...] = KINDS  # rows to generate; "single" is most of the work (one per trial)
    # z-score MSE outputs with the bundle's stored statistics (as served) or each set's own (module docstring)
    pred_stats: str = "bundle"
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")
        if self.pred_stats not in PRED_STATS:
            raise ValueError(f"pred_stats must be one of {PRED_STATS}, got {self.pred_stats!r}")


@dataclass
class EvalInputs:
    """Latent sets to generate from, each aligned with its seen image ids."""

    latents: dict[str, np.ndarray]  # kind -> (N_kind, F)
    image_ids: dict[str, np.ndarray]  # kind -> (N_kind,)
    latent_name: str
    # for the latent fidelity: every image's true latent (ids (M,), values (M, F)), and decodes
    # of other splits that are scored but not drawn, kind -> (latents (N, F), image ids (N,))
    truth: tuple[np.ndarray, np.ndarray]
    parts: list[tuple[str, int]] = field(default_factory=list)  # the target's latents [(name, F)]
    scored_only: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    pred_stats: str = "set"  # how the decoded kinds were z-scored: "set" or "bundle (val, n=N)"


LARGE_KIND = "single, test_large"  # the large test set's single trials: latent fidelity only
DECODED = ("single", "averaged")  # the kinds made from MSE outputs, z-scored per `pred_stats`


def _predict_split(cfg: GenEvalConfig, model: Any, bundle: Any, store: str, split: str,
                   batch_size: int = 256) -> tuple[np.ndarray, pd.DataFrame]:
    """MSE-head predictions (N, F) of `split`'s epochs in `store`, and their metadata
    (the first `cfg.max_images` image ids only when set)."""
    from megdecode.predict import predict_windows

    X, meta = epoch_store.load_epochs(store, splits=[split], tmin=bundle.tmin, tmax=bundle.tmax)
    if len(meta) and X.shape[2] != bundle.n_times:
        raise ValueError(f"store window has {X.shape[2]} samples, the bundle {bundle.n_times}")
    if cfg.max_images and len(meta):
        keep_ids = np.unique(meta["image_id"].to_numpy())[: cfg.max_images]
        mask = meta["image_id"].isin(keep_ids).to_numpy()
        X, meta = X[mask], meta.loc[mask].reset_index(drop=True)
    if not len(meta):
        return np.zeros((0, len(bundle.latent_mean)), np.float32), meta
    subject = np.array([bundle.subject_index(str(s)) for s in meta["subject"]], np.int64)
    _, mse = predict_windows(model, X, subject, batch_size=batch_size)
    return mse, meta


def decode_test_set(cfg: GenEvalConfig, bundle_dir: Path) -> EvalInputs:
    """Predict the small test set with the bundle and build the four latent sets (and the
    large test set's single trials, scored for latent fidelity only)."""
    from megdecode.predict import load_model

    model, bundle = load_model(bundle_dir)
    fit = bundle.extra.get("fit_config", {})
    store = cfg.store or fit.get("store", "")
    latents_dir = cfg.latents_dir or fit.get("latents_dir", "")
    if not store or not latents_dir:
        raise ValueError("the bundle does not name its store/latents folder; pass store and latents_dir")
    manifest = epoch_store.read_manifest(store)
    if list(manifest.ch_names) != list(bundle.ch_names):
        raise ValueError(f"store {store} has other channels than the bundle ({len(manifest.ch_names)} vs {len(bundle.ch_names)})")
    # pred_stats="bundle" decodes the drawn trials as the app does (folded layout, one window
    # per forward; batching rounds differently), so each single-trial image is the one
    # /v1/reconstruct returns for that window with the same seed
    from megdecode.serve.model import inference_layout

    drawn_by, batch = (inference_layout(model), 1) if cfg.pred_stats == "bundle" else (model, 256)
    mse, meta = _predict_split(cfg, drawn_by, bundle, store, "test", batch)
    if not len(meta):
        raise ValueError(f"the store {store} has no epochs in the small test set (split 'test')")
    ids = meta["image_id"].to_numpy(np.int64)
    stats, used = _scaling(cfg, bundle, bundle_dir)
    single = to_latent_space(mse, bundle.latent_mean, bundle.latent_std, stats)
    avg_ids, avg = average_by_image(mse, ids, groups=meta["subject"].to_numpy())
    averaged = to_latent_space(avg, bundle.latent_mean, bundle.latent_std, stats)
    lat_ids, lat, _ = load_target(latents_dir, bundle.latent_name)
    unique = np.unique(ids)
    rows = pd.Index(lat_ids).get_indexer(unique)
    if (rows < 0).any():
        raise KeyError(f"{int((rows < 0).sum())} test images have no {bundle.latent_name!r} latent")
    rng = np.random.default_rng(cfg.generate.seed)
    random = rng.standard_normal((len(unique), len(bundle.latent_mean))) * bundle.latent_std + bundle.latent_mean
    large, large_meta = _predict_split(cfg, model, bundle, store, "test_large")
    scored_only = {LARGE_KIND: (large, large_meta["image_id"].to_numpy(np.int64))} if len(large_meta) else {}
    logger.info("decoded %d test trials of %d images (%s), %d large-set trials", len(ids), len(unique),
                bundle.latent_name, len(large_meta))
    return EvalInputs(
        latents={"single": single, "averaged": averaged, "oracle": lat[rows], "random": random.astype(np.float32)},
        image_ids={"single": ids, "averaged": avg_ids.astype(np.int64), "oracle": unique, "random": unique},
        latent_name=bundle.latent_name, parts=[(n, int(w)) for n, w in bundle.latent_parts],
        truth=(np.asarray(lat_ids, np.int64), lat), scored_only=scored_only, pred_stats=used,
    )


def _scaling(cfg: GenEvalConfig, bundle: Any, bundle_dir: Path) -> tuple[Any, str]:
    """(PredictionStats or None, what the table says) for `cfg.pred_stats`; a bundle without
    stored statistics cannot be evaluated the served way, which is an error, not a fallback."""
    if cfg.pred_stats == "set":
        logger.info("MSE outputs z-scored over each decoded set (pred_stats=set)")
        return None, "set"
    stats = bundle.prediction_stats
    if stats is None:
        raise ValueError(f"the bundle {bundle_dir} stores no prediction statistics (made before they were "
                         "stored): evaluate with pred_stats='set' (--pred-stats set) or retrain it")
    logger.info("MSE outputs z-scored with the bundle's prediction statistics (%s set, n=%d), as served",
                stats.reference, stats.n)
    return stats, f"bundle ({stats.reference}, n={stats.n})"


class _GenerateActor:
    """Ray Data callable class: {"row", "seed", "latent"} -> {"row", "image" (B, H, W, 3) uint8}.

    ``latent`` rows are the concatenated target; `parts` [(name, F)] splits them into the
    named latents, of which the generator takes those it is conditioned on.
    """

    def __init__(self, generator_dir: str, parts: list[tuple[str, int]], config: dict[str, Any]) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.gen = LatentGenerator.from_dir(generator_dir, device=device)
        self.parts = [(str(n), int(w)) for n, w in parts]
        self.config = GenerateConfig.from_flat_dict(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = self.gen.generate(split_target(batch["latent"].astype(np.float32), self.parts), self.config,
                                   seeds=[int(s) for s in batch["seed"]])
        return {"row": batch["row"], "image": np.stack([np.asarray(im) for im in images])}


def generate_on_ray(generator_dir: str, parts: list[tuple[str, int]], latents: np.ndarray, config: GenerateConfig,
                    seeds: np.ndarray | None = None, actors: int = 0, gpu_fraction: float = 0.25,
                    batch_size: int = 16) -> list[Image.Image]:
    """latents (N, F) -> N images on a Ray Data actor pool; sample i uses seeds[i] (default seed + i).

    `parts` [(name, F)] names the latents concatenated in each row (one part for a
    single-latent target).

    One call = one actor pool (each actor loads the generator once), so callers should
    pass everything they need generated at once.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("generation on Ray needs ray.init() first")
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    n_batches = max(1, -(-len(latents) // batch_size))
    if gpus:
        pool = actors or max(1, int(gpus / gpu_fraction))
        options: dict[str, Any] = {"num_gpus": gpu_fraction, "num_cpus": 0}
    else:
        # One actor per CPU: the rows come from the driver (from_items), so Ray Data needs
        # no read tasks beside the pool; on the demo's 2 CPUs two actors generated its
        # 120 images in 22-25 s against 32-34 s for one (jobs/evaluate.py --actors 1 vs 2).
        pool = actors or max(1, int(resources.get("CPU", 1)))
        options = {"num_cpus": 1}
    pool = min(pool, n_batches)
    seeds = np.arange(len(latents)) + config.seed if seeds is None else np.asarray(seeds)
    items = [{"row": i, "seed": int(seeds[i]), "latent": latents[i].astype(np.float32)} for i in range(len(latents))]
    logger.info("generating %d images on %d actor(s)%s", len(items), pool, " sharing GPUs" if gpus else "")
    ds = ray.data.from_items(items).map_batches(
        _GenerateActor, fn_constructor_kwargs={"generator_dir": str(generator_dir), "parts": list(parts),
                                               "config": config.to_flat_dict()},
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool), batch_format="numpy", **options,
    )
    rows, images = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows.append(batch["row"])
        images.append(batch["image"])
    order = np.argsort(np.concatenate(rows))
    return [Image.fromarray(a) for a in np.concatenate(images)[order]]


def generator_meta(path: str | Path) -> dict[str, Any]:
    """A generator folder's generator.json (conditions, sampling defaults), without loading weights."""
    meta_path = Path(path) / "generator.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no weights at {path}: no generator.json")
    return dict(json.loads(meta_path.read_text()))


def generator_defaults(path: str | Path) -> GenerateConfig:
    """The sampling defaults a generator folder stores (its guidance, steps)."""
    return GenerateConfig.from_flat_dict(generator_meta(path).get("defaults", {}))


def _metric_nets(weights: str) -> Any:
    """FeatureNets for the networks whose weights are in `weights`; None without a folder."""
    if not weights:
        return None
    from megdecode.generate.features import NETWORKS, WEIGHT_FILES, FeatureNets

    present = [n for n in NETWORKS if (Path(weights) / WEIGHT_FILES[n]).is_file()]
    if not present:
        raise FileNotFoundError(f"no weights at {weights}: none of {sorted(WEIGHT_FILES.values())}")
    return FeatureNets.load(weights, present)


def per_image_scores(recons: list[Image.Image], seen: list[Image.Image], nets: Any) -> np.ndarray:
    """Per-image ranking score (SSIM, + 1 - SwAV distance when the SwAV net is loaded)."""
    from megdecode.generate.features import as_float_images
    from megdecode.generate.metrics import paired_correlation, ssim

    s = np.array([ssim([r], [g]) for r, g in zip(recons, seen, strict=True)])
    swav = None
    if nets is not None and "swav" in nets.nets:
        rec, gt = as_float_images(recons), as_float_images(seen)
        swav = 1.0 - paired_correlation(nets.features("swav", rec), nets.features("swav", gt))
    return rank_scores(s, swav)


def evaluate_generation(cfg: GenEvalConfig, bundle_dir: Path) -> tuple[pd.DataFrame, Path]:
    """Decode, generate (Ray must be initialised), score; write out/; returns (table, grid path)."""
    from megdecode.generate.metrics import compute_metrics

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_meta = generator_meta(cfg.generator)
    from megdecode.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    missing = sorted(set(gen_meta["conditions"]) - {name for name, _ in bundle.latent_parts})
    if missing:
        raise ValueError(f"the generator is conditioned on {sorted(gen_meta['conditions'])}, the bundle "
                         f"predicts {bundle.latent_name!r}: nothing decodes {missing}")
    inputs = decode_test_set(cfg, bundle_dir)
    kinds = [k for k in KINDS if k in cfg.kinds]
    fidelity = write_fidelity(inputs, kinds, out)
    seen_cache: dict[int, Image.Image] = {}
    paths = _image_paths(cfg, bundle_dir)
    nets = _metric_nets(cfg.metric_weights)
    # every kind in one pass over one actor pool; sample i of a kind uses seed + i, so
    # oracle, random and decoded images of the same row start from the same noise
    everything = np.concatenate([inputs.latents[k] for k in kinds]).astype(np.float32)
    seeds = np.concatenate([cfg.generate.seed + np.arange(len(inputs.latents[k])) for k in kinds])
    generated = generate_on_ray(cfg.generator, inputs.parts, everything, cfg.generate, seeds,
                                cfg.actors, cfg.gpu_fraction, cfg.batch_size)
    rows, recon, seen = [], {}, {}
    at = 0
    for kind in kinds:
        images = generated[at : at + len(inputs.latents[kind])]
        at += len(images)
        targets = []
        for i in inputs.image_ids[kind].tolist():
            if i not in seen_cache:
                seen_cache[i] = open_rgb(paths[i])
            targets.append(seen_cache[i])
        recon[kind], seen[kind] = images, targets
        scores = compute_metrics(images, targets, nets)
        rows.append({"kind": kind, "n": len(images), **scores,
                     "latent_r": float(fidelity.loc[fidelity.kind == kind, "r"].mean()),
                     "pred_stats": inputs.pred_stats if kind in DECODED else NOT_SCALED})
        logger.info("%s: %s", kind, {k: round(v, 4) for k, v in scores.items()})
    table = pd.DataFrame(rows)
    table.to_csv(out / "metrics.csv", index=False)
    (out / "metrics.md").write_text(format_markdown(table))
    grid = _write_grid(cfg, inputs, recon, seen, nets, out / "grid.png")
    arrays: dict[str, Any] = {k: np.stack([np.asarray(im) for im in v]) for k, v in recon.items()}
    arrays.update({f"{k}_image_ids": inputs.image_ids[k] for k in kinds})
    np.savez_compressed(out / "reconstructions.npz", **arrays)
    return table, grid


def fidelity_table(inputs: EvalInputs, kinds: list[str]) -> pd.DataFrame:
    """Per-dimension r of each kind's latents vs the truth (`fidelity.latent_fidelity`).

    Also scores `inputs.scored_only` (the large test set's single trials: more images than
    the small set, so a steadier r, though nothing is drawn from them)."""
    from megdecode.generate.fidelity import latent_fidelity

    decoded = {k: inputs.latents[k] for k in kinds} | {k: v for k, (v, _) in inputs.scored_only.items()}
    ids = {k: inputs.image_ids[k] for k in kinds} | {k: i for k, (_, i) in inputs.scored_only.items()}
    truth_ids, truth = inputs.truth
    return latent_fidelity(decoded, ids, truth, truth_ids, inputs.parts or [(inputs.latent_name, truth.shape[1])])


def write_fidelity(inputs: EvalInputs, kinds: list[str], out: Path) -> pd.DataFrame:
    """`fidelity_table`, written as latent_fidelity.{csv,png} in `out` and logged."""
    from megdecode.generate.fidelity import plot_fidelity, summarise

    table = fidelity_table(inputs, kinds)
    table.to_csv(out / "latent_fidelity.csv", index=False)
    figure = out / "latent_fidelity.png"
    figure.unlink(missing_ok=True)
    if (table.kind != "oracle").any():
        plot_fidelity(table[table.kind != "oracle"], figure)
    for r in summarise(table).to_dict("records"):
        logger.info("latent fidelity %s/%s: mean r %.3f over %d dims", r["kind"], r["part"], r["mean_r"], r["dims"])
    return table


def _image_paths(cfg: GenEvalConfig, bundle_dir: Path) -> dict[int, Path]:
    from megdecode.bundle import load_bundle
    from megdecode.latents.stage import store_images

    store = cfg.store or load_bundle(bundle_dir).extra.get("fit_config", {}).get("store", "")
    if not cfg.bids_root:
        raise ValueError("bids_root must be set (the images live under bids_root/stimuli)")
    ids, rel = store_images(Path(store))
    return {int(i): bids.image_file(cfg.bids_root, p, cfg.images_root or None) for i, p in zip(ids, rel, strict=True)}


def _write_grid(cfg: GenEvalConfig, inputs: EvalInputs, recon: dict[str, list[Image.Image]],
                seen: dict[str, list[Image.Image]], nets: Any, path: Path) -> Path:
    """One row per test image: seen | oracle | averaged | first single trial | random.

    Averaged rows are per (subject, image); the grid keeps each image's first subject.
    """
    first_kind = next(iter(recon))
    ids0 = inputs.image_ids[first_kind].tolist()
    base = np.array(list(dict.fromkeys(ids0)))
    columns: dict[str, list[Image.Image]] = {"seen": [seen[first_kind][ids0.index(i)] for i in base.tolist()]}
    for kind in [k for k in ("oracle", "averaged", "single", "random") if k in recon]:
        ids = inputs.image_ids[kind].tolist()
        first = {i: ids.index(i) for i in dict.fromkeys(ids)}
        columns[kind] = [recon[kind][first[int(i)]] for i in base]
    rank_kind = cfg.rank_by if cfg.rank_by in columns else next(k for k in columns if k != "seen")
    scores = per_image_scores(columns[rank_kind], columns["seen"], nets)
    how = "SwAV+SSIM" if nets is not None and "swav" in nets.nets else "SSIM"
    return save_grid(path, columns, scores, cfg.grid_per_group,
                     title=f"{inputs.latent_name}: rows ranked by {how} of '{rank_kind}' (best / middle / worst)")


def format_markdown(table: pd.DataFrame) -> str:
    """The metrics table as GitHub markdown (higher is better except swav)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.to_dict("records"):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def resolve_bundle(bundle: str, tracking_uri: str | None, dst: Path) -> Path:
    """A bundle folder, or ``models:/name@alias`` downloaded from the MLflow registry."""
    if bundle.startswith("models:/"):
        from megdecode.tracking import Tracker

        name, _, alias = bundle.removeprefix("models:/").partition("@")
        if not name or not alias or not tracking_uri:
            raise ValueError(f"{bundle!r}: use models:/NAME@ALIAS with a tracking URI")
        return Tracker(tracking_uri).resolve_alias(name, alias, dst)
    path = Path(bundle)
    if not (path / "bundle.json").is_file():
        raise FileNotFoundError(f"no bundle.json in {path}")
    return path


def run_and_log(cfg: GenEvalConfig, tracking_uri: str | None = None, run_id: str | None = None,
                experiment: str = "megdecode-generate") -> tuple[pd.DataFrame, Path, str | None]:
    """Resolve the bundle, evaluate (Ray initialised by the caller), log to MLflow when a URI is given.

    Metrics are logged as ``gen/<kind>/<metric>``; the table as tables/generate_metrics.csv
    and the grid under figures/. An existing `run_id` is logged into and left open (it is
    the caller's); a new run is ended. Returns (table, grid path, run id).
    """
    out = Path(cfg.out)
    bundle_dir = resolve_bundle(cfg.bundle, tracking_uri, out / "bundle")
    table, grid = evaluate_generation(cfg, bundle_dir)
    if not tracking_uri:
        return table, grid, None
    from mlflow.entities import Metric, Param, RunTag

    from megdecode.tracking import Tracker

    tracker = Tracker(tracking_uri, experiment)
    own = run_id is None
    if own:
        run_id = tracker.client.create_run(tracker.experiment_id, run_name="generate-eval",
                                           tags={"megdecode.kind": "generate-eval"}).info.run_id
    assert run_id is not None
    have = tracker.client.get_run(run_id).data.params
    params = [Param(f"gen_eval.{k}", str(v)) for k, v in cfg.to_flat_dict().items() if f"gen_eval.{k}" not in have]
    now = int(time.time() * 1000)
    metrics = [Metric(f"gen/{r['kind']}/{k}", float(v), now, 0) for r in table.to_dict("records")
               for k, v in r.items() if k not in ("kind", "n", "pred_stats")]
    fidelity = pd.read_csv(out / "latent_fidelity.csv")
    large = fidelity.loc[fidelity.kind == LARGE_KIND, "r"]
    if len(large):
        metrics.append(Metric("gen/test_large/latent_r", float(large.mean()), now, 0))
    used = sorted(set(table["pred_stats"]) - {NOT_SCALED})
    tags = [RunTag("megdecode.gen_eval.pred_stats", ", ".join(used))] if used else []
    tracker.client.log_batch(run_id, metrics=metrics, params=params[:100], tags=tags)
    tracker.log_table(run_id, table, "generate_metrics.csv")
    tracker.log_artifacts(run_id, grid, "figures")
    if (out / "latent_fidelity.png").is_file():
        tracker.log_artifacts(run_id, out / "latent_fidelity.png", "figures")
    tracker.log_artifacts(run_id, out / "metrics.md", "tables")
    tracker.log_artifacts(run_id, out / "latent_fidelity.csv", "tables")
    if own:
        tracker.client.set_terminated(run_id)
    logger.info("logged generation metrics to run %s", run_id)
    return table, grid, run_id
