"""The live page's server side: replay source, thumbnails, the browser's WebSocket token."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mne
import numpy as np
import pytest
from PIL import Image

from megdecode.bundle import ModelBundle
from megdecode.bundle_fields import FitRecord, GalleryMeta, LatentPart, SubjectScaler
from megdecode.data import bids
from megdecode.data import store as epoch_store
from megdecode.serve.admission import ws_auth
from megdecode.serve.config import LiveConfig
from megdecode.serve.errors import ApiError
from megdecode.serve.gallery import Gallery
from megdecode.serve.livepage import LivePage, display_channels
from megdecode.serve.livestatic import static_file


def _bundle(tiny_run: Path, store: Path | None = None) -> ModelBundle:
    """A bundle shaped like one trained on the tiny twin (the page reads no weights)."""
    manifest = epoch_store.read_manifest(tiny_run / "store")
    meta = epoch_store.load_metadata(tiny_run / "store")
    test = meta[meta["split"] == "test"].drop_duplicates("image_id").sort_values("image_id")
    c, f = len(manifest.ch_names), 4
    return ModelBundle(
        model_config={},
        state_dict={},
        loss=None,
        tmin=0.0,
        tmax=0.5,
        sfreq=manifest.sfreq,
        n_times=61,
        ch_names=list(manifest.ch_names),
        pos2d=np.zeros((c, 2), np.float32),
        subjects=list(manifest.subjects),
        latent_name="handcrafted",
        latent_parts=[LatentPart("handcrafted", f)],
        latent_mean=np.zeros(f, np.float32),
        latent_std=np.ones(f, np.float32),
        gallery=np.eye(len(test), f, dtype=np.float32),
        gallery_ids=test["image_id"].to_numpy(np.int64),
        gallery_meta=GalleryMeta(tuple(test["category"]), tuple(test["image_path"])),
        fit_config=FitRecord({"store": str(store or tiny_run / "store")}),
        scalers={s: SubjectScaler.from_json(d) for s, d in manifest.scalers.items()},
    )


def test_replay_is_a_run_of_the_stores_bids_in_the_bundles_channel_order(tiny_run: Path) -> None:
    bundle = _bundle(tiny_run)
    page = LivePage(LiveConfig())
    replay = page.replay(bundle, "", None, None)
    subject = bundle.subjects[0]
    keys = bids.find_runs(tiny_run / "bids", subjects=[subject])
    assert (
        replay.source == "recording"
        and replay.subject == subject
        and replay.run == keys[-1].basename
    )
    raw = mne.io.read_raw_fif(
        bids.raw_path(tiny_run / "bids", keys[-1]).fpath, preload=True, verbose=False
    )
    assert replay.sfreq == raw.info["sfreq"] and replay.n_samples == raw.n_times
    block = replay.read(100, 400)
    assert block.dtype == np.dtype("<f4") and block.shape == (len(bundle.ch_names), 300)
    np.testing.assert_allclose(
        block, raw.get_data(picks=bundle.ch_names, start=100, stop=400), rtol=1e-6
    )
    info = page.info(replay, Gallery.from_bundle(bundle), bundle.subjects)
    assert (
        info["chunk_samples"] == round(0.025 * replay.sfreq)
        and info["block_samples"] == 40 * info["chunk_samples"]
    )
    assert info["runs"] == [k.basename for k in keys] and info["subjects"] == bundle.subjects
    shown = [e for e in info["events"] if e["in_gallery"]]
    assert shown and all(e["image_id"] in set(bundle.gallery_ids.tolist()) for e in shown)
    assert (
        page.replay(bundle, "", subject, replay.run) is replay
    )  # the page's data requests hit the cache
    for start, stop in ((-1, 10), (10, 10), (0, replay.n_samples + 1), (0, int(11 * replay.sfreq))):
        with pytest.raises(ApiError, match="start < stop") as err:
            replay.read(start, stop)
        assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        page.replay(bundle, "", "nobody", None)
    assert err.value.status == 404 and err.value.error == "unknown_subject"
    with pytest.raises(ApiError) as err:
        page.replay(bundle, "", subject, "sub-x_ses-01_task-main_run-09")
    assert err.value.status == 404 and subject in err.value.detail


def test_replay_rows_follow_a_bundle_channel_order_unlike_the_files(tiny_run: Path) -> None:
    """The model's input rows are its bundle's channel order; the twin's store and files list
    channels in the same (sorted) order, so that order is permuted here: a replay in the
    file's order (or sorted) would feed each channel's signal to another channel's weights."""
    bundle = _bundle(tiny_run)
    order = np.random.default_rng(0).permutation(len(bundle.ch_names))
    bundle.ch_names = [bundle.ch_names[i] for i in order]
    assert bundle.ch_names != sorted(bundle.ch_names)
    replay = LivePage(LiveConfig()).replay(bundle, "", None, None)
    key = bids.find_runs(tiny_run / "bids", subjects=[replay.subject])[-1]
    raw = mne.io.read_raw_fif(bids.raw_path(tiny_run / "bids", key).fpath, verbose=False)
    in_file_order = [c for c in raw.ch_names if c in set(bundle.ch_names)]
    assert in_file_order != bundle.ch_names  # the file lists the same channels in another order
    every = raw.get_data(start=100, stop=400)  # all channels, in the file's order
    rows = [raw.ch_names.index(name) for name in bundle.ch_names]
    assert replay.channels == bundle.ch_names
    np.testing.assert_allclose(replay.read(100, 400), every[rows], rtol=1e-6)


def test_without_a_bids_dataset_the_replay_is_noise_and_says_why(
    tiny_run: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tiny_run, store=tmp_path / "store")
    replay = LivePage(LiveConfig()).replay(bundle, "", None, None)
    assert replay.source == "noise" and replay.events.empty
    assert "no BIDS dataset found" in replay.note and str(tmp_path / "bids") in replay.note
    raw_sfreq = bundle.scalers[bundle.subjects[0]].raw_sfreq
    assert replay.sfreq == raw_sfreq
    a, b = replay.read(0, 50), replay.read(0, 50)
    assert np.array_equal(a, b) and np.all(np.isfinite(a)) and a.std() > 0


def test_thumbnails_are_small_cached_pngs(tiny_run: Path) -> None:
    bundle = _bundle(tiny_run)
    gallery = Gallery.from_bundle(bundle)
    page = LivePage(LiveConfig(thumb_px=32))
    image_id = int(gallery.ids[0])
    png = page.thumbnail(image_id, bundle, gallery, "")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and max(image.size) <= 32 and min(image.size) > 0
    assert page.thumbnail(image_id, bundle, gallery, "") is png
    with pytest.raises(ApiError) as err:
        page.thumbnail(-12345, bundle, gallery, "")
    assert err.value.status == 404


def test_a_browser_token_comes_as_a_subprotocol_and_headers_win() -> None:
    token = "s3cret token/é"
    offered = "megdecode, bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    assert ws_auth({"sec-websocket-protocol": offered}) == (
        {"authorization": f"Bearer {token}"},
        "megdecode",
    )
    headers = {"authorization": "Bearer other", "sec-websocket-protocol": offered}
    assert ws_auth(headers) == (headers, "megdecode")
    assert ws_auth({"sec-websocket-protocol": "bearer.%%%"}) == (
        {},
        None,
    )  # never echoes the token's protocol
    assert ws_auth({}) == ({}, None)


def test_static_files_fill_the_base_and_refuse_other_names() -> None:
    page = static_file("live.html", '/x"y/')
    body = bytes(page.body).decode()
    assert 'data-base="/x&quot;y"' in body and "__BASE__" not in body
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert static_file("live.js").media_type.startswith("text/javascript")
    with pytest.raises(ApiError) as err:
        static_file("../config.py")
    assert err.value.status == 404


def test_display_channels_prefer_occipital_sensors() -> None:
    names = [f"MLF{i:02d}" for i in range(20)] + [f"MLO{i:02d}" for i in range(8)] + ["MZO01"]
    picks = display_channels(names, 6)
    assert len(picks) == 6 and all(names[i][2] == "O" for i in picks)
    assert display_channels(["A", "B"], 6) == [0, 1]
