"""The twin's signal is really there, where and when the config puts it.

Average all trials of a small high-SNR twin (band-passed 1-30 Hz, as a decoder's
preprocessing would), project the evoked response on the sensors that the ground-truth
sources of each group dominate, and find the peaks: they must sit at the configured
early / late / offset latencies (+-30 ms), and move when a twin is built with other ones.
"""

from __future__ import annotations

from pathlib import Path

import mne
import mne_bids
import numpy as np
import pytest

from megdecode.twin import helmet
from megdecode.twin.config import TwinConfig
from megdecode.twin.simulate import read_ground_truth, simulate

TOLERANCE_S = 0.03
SEARCH = {"early": (0.03, 0.5), "late": (0.03, 0.5), "offset": (0.5, 1.0)}  # s after onset
SHIFT = {"early_latency_s": 0.05, "late_latency_s": 0.07, "offset_latency_s": 0.06}


def _config(**changes: float) -> TwinConfig:
    base = TwinConfig.preset("tiny", seed=11).replace(
        n_subjects=1,
        n_sessions=1,
        n_runs=2,
        image_size=16,
        sfreq=200.0,
        snr=1.0,
        subject_latency_sd_s=0.0,
    )
    return base.replace(**changes)


def _evoked(root: Path, bad: str) -> mne.Evoked:
    evokeds = []
    for path in mne_bids.find_matching_paths(
        root, subjects="BIGMEG1", extensions=".fif", datatypes="meg"
    ):
        raw = mne_bids.read_raw_bids(path, verbose="error").load_data()
        raw.filter(1.0, 30.0, picks="mag", verbose="error")
        events = mne.find_events(raw, stim_channel="UPPT001", verbose=False)
        epochs = mne.Epochs(
            raw,
            events,
            tmin=-0.2,
            tmax=1.0,
            picks="mag",
            baseline=(-0.2, 0.0),
            preload=True,
            verbose="error",
        ).drop_channels([bad])
        evokeds.append(epochs.average())
    return mne.combine_evoked(evokeds, weights="nave")


def _peaks(root: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Measured and configured peak latency (s after onset) per source group."""
    truth = read_ground_truth(root)
    evoked = _evoked(root, truth["config"]["bad_channel"])
    sources = truth["subjects"]["BIGMEG1"]["sources"]
    topo = {}
    for group, src in sources.items():  # expected field of each group's (positive) sources
        gain = helmet.leadfield(evoked.info, np.array(src["rr"]), np.array(src["nn"]))
        topo[group] = gain @ (np.array(src["gain"]) * truth["config"][f"{group}_amp"])
    measured = {}
    for group, (lo, hi) in SEARCH.items():
        others = sum(np.abs(t) for g, t in topo.items() if g != group)
        dominance = np.abs(topo[group]) ** 2 / (others + 1e-30)
        picks = np.argsort(dominance)[-10:]
        signal = (np.sign(topo[group][picks])[:, None] * evoked.data[picks]).mean(0)
        window = (evoked.times >= lo) & (evoked.times <= hi)
        measured[group] = float(evoked.times[window][np.argmax(signal[window])])
    return measured, truth["latencies_s"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("signal")
    shifted = {k: getattr(_config(), k) + v for k, v in SHIFT.items()}
    simulate(_config(), base / "default")
    simulate(_config(**shifted), base / "shifted")
    return {"default": base / "default", "shifted": base / "shifted"}


@pytest.mark.parametrize("which", ["default", "shifted"])
def test_evoked_peaks_at_the_configured_latencies(twins: dict[str, Path], which: str) -> None:
    measured, configured = _peaks(twins[which])
    for group, latency in measured.items():
        assert abs(latency - configured[group]) <= TOLERANCE_S, (group, latency, configured[group])


def test_shifted_latencies_move_the_peaks(twins: dict[str, Path]) -> None:
    default, _ = _peaks(twins["default"])
    shifted, _ = _peaks(twins["shifted"])
    moved = {
        "early": SHIFT["early_latency_s"],
        "late": SHIFT["late_latency_s"],
        "offset": SHIFT["offset_latency_s"],
    }
    for group, delta in moved.items():
        assert abs((shifted[group] - default[group]) - delta) <= TOLERANCE_S, (
            group,
            default,
            shifted,
        )
