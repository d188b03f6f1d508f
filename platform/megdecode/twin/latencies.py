"""The latencies a twin actually simulated, per subject: what a recovered peak should match.

`TwinConfig.<group>_latency_s` is the population mean. Each source draws its own latency
around it (`source_latency_sd_s`) and each subject shifts its whole group
(`subject_latency_sd_s`), so a twin of a few subjects realises other means: the demo
twin's late (semantic) response peaks at 0.242, 0.221, 0.242 and 0.236 s in its four
subjects (mean 0.235 s) for a configured 0.25 s. A decoding curve pooled over subjects
peaks near that realised mean, not near the configured one (docs/window_latency.md).

The values are recomputed from the ground truth's config with the simulator's own
functions and random streams (`anatomy`, `subject_sources`, `rng_for`), so they are the
ones the twin used; nothing is re-simulated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megdecode.twin import sources as twin_sources
from megdecode.twin.bids_writer import read_ground_truth
from megdecode.twin.config import TwinConfig


def realised_latencies(cfg: TwinConfig) -> dict[str, dict[str, float]]:
    """{group: {"config", "mean", "sub-<label>" ...}} in seconds after the group's event.

    Per subject: the mean over the group's sources of their latency (before the per-trial
    jitter, which has mean zero). "mean": over subjects, the value a curve pooled over
    subjects should peak near. Offset latencies are after image offset, as in the config.
    """
    from megdecode.twin.simulate import make_stimuli, rng_for

    _, _, low, sem = make_stimuli(cfg)
    population = twin_sources.anatomy(cfg, low.shape[1], sem.shape[1])
    subjects = [
        twin_sources.subject_sources(cfg, population, rng_for(cfg, 6, s))
        for s in range(cfg.n_subjects)
    ]
    out: dict[str, dict[str, float]] = {}
    for group in twin_sources.GROUPS:
        per_subject = [float(np.mean(sub[group].latency)) for sub in subjects]
        out[group] = {
            "config": float(getattr(cfg, f"{group}_latency_s")),
            "mean": float(np.mean(per_subject)),
        } | {f"sub-BIGMEG{s + 1}": v for s, v in enumerate(per_subject)}
    return out


def realised_onset_latencies(bids_root: str | Path) -> dict[str, float]:
    """{group: mean realised latency after image onset} of the twin at `bids_root`
    (offset + image duration for the offset group), the peaks to compare curves with."""
    truth = read_ground_truth(bids_root)
    cfg = TwinConfig.from_flat_dict(truth["config"], strict=False)
    realised = realised_latencies(cfg)
    return {
        group: values["mean"] + (cfg.image_duration_s if group == "offset" else 0.0)
        for group, values in realised.items()
    }
