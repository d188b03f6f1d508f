"""The online preprocessing gives the offline pipeline's model inputs for the same samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megdecode.bundle import ModelBundle
from megdecode.bundle_io import load_bundle
from megdecode.data import bids
from megdecode.data import store as epoch_store
from megdecode.data.build import build_epoch_store
from megdecode.data.meg_info import pick_meg
from megdecode.data.preprocess import PreprocessConfig
from megdecode.serve.online_preprocess import OnlinePreprocessor
from megdecode.serve.stream import StreamError, StreamSpec
from megdecode.train_bundle import serving_fields


def _replay(
    bundle: ModelBundle, bids_root: Path, chunk: int = 37
) -> tuple[dict[int, np.ndarray], object, str]:
    """Feed one run in odd-sized chunks; collect the window of every event onset when ready."""
    subject = bundle.subjects[0]
    spec = StreamSpec.from_bundle(bundle, subject)
    key = bids.find_runs(bids_root, subjects=[subject])[0]
    rec = bids.read_run(bids_root, key)
    picks = pick_meg(rec.raw.info, spec.preprocess)
    assert [rec.raw.ch_names[i] for i in picks] == bundle.ch_names
    raw = rec.raw.get_data(picks=picks)
    pre = OnlinePreprocessor(spec, len(picks), extra_capacity=chunk)
    events = rec.events[rec.events["trial_type"] != "catch"]
    pending = dict(
        zip(events["sample"].astype(int), events["trial_index"].astype(int), strict=True)
    )
    got: dict[int, np.ndarray] = {}
    for start in range(0, raw.shape[1], chunk):
        pre.push(raw[:, start : start + chunk])
        ready = [s for s in pending if pre.first_onset <= s <= pre.last_ready_onset]
        if ready:
            for s, w in zip(ready, pre.windows(np.array(ready)), strict=True):
                got[pending.pop(s)] = w
    return got, key, subject


def _offline(store: Path, bundle: ModelBundle, key: object, subject: str) -> dict[int, np.ndarray]:
    X, meta = epoch_store.load_epochs(store, subjects=[subject], tmin=bundle.tmin, tmax=bundle.tmax)
    rows = (meta["session"] == key.session) & (meta["run"] == key.run)
    return dict(zip(meta.loc[rows, "trial_index"].astype(int), X[rows.to_numpy()], strict=True))


def test_stream_equals_offline_causal_store(
    causal_run: Path, tiny_bundle: Path, tiny_run: Path
) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle.preprocess is not None and bundle.preprocess.preset == "things-official"
    online, key, subject = _replay(bundle, causal_run / "bids")
    offline = _offline(causal_run / "store", bundle, key, subject)
    assert len(online) >= 10 and set(online) <= set(offline)
    for trial, window in online.items():
        np.testing.assert_allclose(window, offline[trial], rtol=0, atol=1e-4)
    # A zero-phase band-passed store differs from the causal stream: the check has teeth.
    zero_run = causal_run.parent / "zero_phase_store"
    build_epoch_store(
        tiny_run / "bids", zero_run, PreprocessConfig(preset="things-official"), cache_dir=None
    )
    zero = _offline(zero_run, bundle, key, subject)
    trial = next(iter(online))
    assert np.abs(online[trial] - zero[trial]).max() > 1e-2
    assert StreamSpec.from_bundle(bundle, subject).matches_training


def test_stream_equals_offline_default_store(tiny_run: Path, tiny_bundle: Path) -> None:
    """The default ("paper") store has no band-pass: the stream filters nothing, and its
    windows are the stored ones, whatever filter_phase says."""
    bundle = load_bundle(tiny_bundle)
    bundle.preprocess, bundle.scalers = serving_fields(
        str(tiny_run / "store"), list(bundle.subjects)
    )
    assert bundle.preprocess is not None and bundle.preprocess.preset == "paper"
    assert bundle.preprocess.filter_phase == "zero"
    online, key, subject = _replay(bundle, tiny_run / "bids")
    offline = _offline(tiny_run / "store", bundle, key, subject)
    assert len(online) >= 10 and set(online) <= set(offline)
    for trial, window in online.items():
        np.testing.assert_allclose(window, offline[trial], rtol=0, atol=1e-4)
    assert StreamSpec.from_bundle(bundle, subject).matches_training


def test_old_bundle_without_stream_fields_is_refused(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    bundle.preprocess, bundle.scalers = None, {}  # a bundle of a store that recorded neither
    with pytest.raises(StreamError, match="no preprocess / scalers"):
        StreamSpec.from_bundle(bundle, bundle.subjects[0])
    with pytest.raises(StreamError, match="no scaler for subject"):
        StreamSpec.from_bundle(load_bundle(tiny_bundle), "nobody")
