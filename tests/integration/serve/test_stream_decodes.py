"""A twin run replayed through WS /v1/stream: decodes at image onsets retrieve the shown image.

The twin here is built to be decodable in seconds (one subject, high SNR, few artefacts,
the ground-truth low-level latent as target); the store is causal-filtered, as the
stream computes. Chance is what a random ranking of the bundle's gallery gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.serve,
    pytest.mark.ray,
    pytest.mark.slow,
]  # ~25 s data + fit, ~30 s Serve, ~20 s replay


@pytest.fixture(scope="module")
def decodable_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bids root, bundle) of a twin whose early response carries the image's low-level factors."""
    import torch

    from megdecode.data.build import build_epoch_store
    from megdecode.data.preprocess import PreprocessConfig
    from megdecode.models.brain import BrainConfig
    from megdecode.train import fit
    from megdecode.train_config import FitConfig, TrainConfig
    from megdecode.twin.config import TwinConfig
    from megdecode.twin.simulate import simulate
    from megdecode.twin.truth_latents import write_twin_latents

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("decodable")
    twin = TwinConfig(
        seed=0,
        n_subjects=1,
        n_sessions=1,
        n_runs=2,
        n_categories=12,
        n_groups=4,
        n_exp_per_category=20,
        n_test_categories=4,
        snr=4.0,
        latency_jitter_s=0.005,
        amplitude_jitter=0.1,
        alpha_ft=50.0,
        drift_ft=300.0,
        blink_rate_per_min=0.0,
        isi_mean_s=0.7,
        isi_jitter_s=0.1,
        run_lead_s=1.0,
        run_tail_s=1.0,
    )
    simulate(twin, root / "bids")
    build_epoch_store(root / "bids", root / "store", PreprocessConfig(filter_phase="causal"))
    write_twin_latents(root / "bids", root / "latents")
    model = BrainConfig(
        hidden_channels=32, merger_channels=32, fourier_freqs=4, depth=1, projection_hidden=32
    )
    train = TrainConfig(
        latent="twin-lowlevel",
        max_epochs=60,
        batch_size=32,
        patience=60,
        seed=0,
        tmin=0.0,
        tmax=0.5,
        lr=3e-3,
    )
    result = fit(
        FitConfig(
            store=str(root / "store"), latents_dir=str(root / "latents"), model=model, train=train
        ),
        out_dir=root / "bundle",
    )
    assert result.bundle_path is not None
    return root / "bids", result.bundle_path


@pytest.fixture(scope="module")
def stream_url(ray_local: None, decodable_bundle: tuple[Path, Path]) -> Iterator[str]:
    from ray import serve

    from megdecode.serve.app import free_port, start
    from megdecode.serve.config import ServeConfig

    cfg = ServeConfig.from_mapping(
        {
            "app_name": "megdecode-stream",
            "http": {"port": free_port(), "num_cpus": 0.1},
            "decoder": {"model": str(decodable_bundle[1]), "num_cpus": 0.2},
        }
    )
    url = start(cfg, token="")
    yield url.replace("http", "ws") + "/v1/stream"
    serve.delete(cfg.app_name)


def test_stream_decodes_after_image_onsets_retrieve_the_shown_image_above_chance(
    stream_url: str, decodable_bundle: tuple[Path, Path]
) -> None:
    from websockets.sync.client import connect

    from megdecode.bundle_io import load_bundle
    from megdecode.data import bids
    from megdecode.data.meg_info import pick_meg
    from megdecode.serve.stream import StreamSpec

    bids_root, bundle_dir = decodable_bundle
    b = load_bundle(bundle_dir)
    subject = b.subjects[0]
    spec = StreamSpec.from_bundle(b, subject)
    rec = bids.read_run(bids_root, bids.find_runs(bids_root, subjects=[subject])[0])
    raw = rec.raw.get_data(picks=pick_meg(rec.raw.info, spec.preprocess)).astype("<f4")
    k = 5
    decodes: dict[int, list[int]] = {}

    def take(message: str | bytes) -> bool:
        msg = json.loads(message)
        assert msg["type"] in ("decode", "behind", "end"), msg
        if msg["type"] == "decode":
            decodes[msg["onset_sample"]] = [h["image_id"] for h in msg["top_k"]]
        return msg["type"] == "end"

    chunk = int(0.5 * spec.sfreq_in)
    with connect(stream_url, max_size=2**24, max_queue=None) as ws:
        ws.send(json.dumps({"subject": subject, "top_k": k}))
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready" and ready["filter_matches_training"], ready
        for start in range(0, raw.shape[1], chunk):
            ws.send(np.ascontiguousarray(raw[:, start : start + chunk]).tobytes())
            while True:  # drain what is ready, so neither side blocks on a full buffer
                try:
                    take(ws.recv(timeout=0))
                except TimeoutError:
                    break
        ws.send(json.dumps({"type": "end"}))
        while not take(ws.recv(timeout=120)):
            pass
    onsets = np.array(sorted(decodes))
    stride = ready["stride_samples"]
    assert len(onsets) > 100 and np.all(np.diff(onsets) == stride)
    gallery = set(b.gallery_ids.tolist())
    events = rec.events[rec.events["image_id"].isin(gallery)]
    hits, n, control = 0, 0, 0
    images = events["image_id"].astype(int).to_numpy()
    for i, sample in enumerate(events["sample"].astype(int)):
        nearest = onsets[np.argmin(np.abs(onsets - sample))]
        if (
            abs(nearest - sample) > stride // 2
        ):  # the window of this onset was not decoded (run edges)
            continue
        n += 1
        hits += images[i] in decodes[int(nearest)]
        control += images[(i + 1) % len(images)] in decodes[int(nearest)]  # another trial's image
    chance = k / len(gallery)
    print(
        f"stream top-{k}: {hits}/{n} = {hits / max(n, 1):.3f}; another trial's image {control}/{n}; chance {chance:.3f}"
    )
    assert n >= 30, n
    assert hits / n >= 2.5 * chance and hits >= 2 * control, (hits, control, n, chance)
