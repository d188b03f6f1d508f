"""The latencies a twin realised: its config's when no spread is drawn, else per subject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megdecode.twin import sources as twin_sources
from megdecode.twin.bids_writer import FORMAT, TRUTH_FILE
from megdecode.twin.config import TwinConfig
from megdecode.twin.latencies import realised_latencies, realised_onset_latencies


def test_without_spread_the_realised_latencies_are_the_config() -> None:
    cfg = TwinConfig(subject_latency_sd_s=0.0, source_latency_sd_s=0.0)
    for group, values in realised_latencies(cfg).items():
        expected = getattr(cfg, f"{group}_latency_s")
        assert values == pytest.approx(
            {"config": expected, "mean": expected, "sub-BIGMEG1": expected, "sub-BIGMEG2": expected}
        )


def test_subjects_realise_their_own_latencies_around_the_config() -> None:
    cfg = TwinConfig(n_subjects=4)
    realised = realised_latencies(cfg)
    assert set(realised) == set(twin_sources.GROUPS)
    late = realised["late"]
    subjects = [v for k, v in late.items() if k.startswith("sub-")]
    assert len(subjects) == 4 and len(set(subjects)) == 4  # one shift per subject
    assert late["mean"] == pytest.approx(np.mean(subjects))
    # sources (sd 10 ms, 8 per group) and subjects (sd 10 ms): within 4 sd of the config
    spread = np.hypot(cfg.subject_latency_sd_s, cfg.source_latency_sd_s / np.sqrt(8))
    assert abs(late["mean"] - cfg.late_latency_s) < 4 * spread
    assert late["mean"] != pytest.approx(cfg.late_latency_s, abs=1e-4)


def test_onset_latencies_read_from_the_ground_truth(tmp_path: Path) -> None:
    cfg = TwinConfig(n_subjects=3, seed=4)
    path = tmp_path / TRUTH_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": FORMAT, "config": cfg.to_flat_dict()}))
    onset = realised_onset_latencies(tmp_path)
    realised = realised_latencies(cfg)
    assert onset["late"] == pytest.approx(realised["late"]["mean"])
    assert onset["offset"] == pytest.approx(realised["offset"]["mean"] + cfg.image_duration_s)
