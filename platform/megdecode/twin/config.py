"""The MEG twin's configuration: every number that shapes the simulated study.

Its own module so that the simulator's parts (`sources`, `noise`, `bids_writer`) can take a
`TwinConfig` without importing the simulator that assembles them. Every field is written to
``sourcedata/twin/ground_truth.json``; nothing downstream may assume the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from megdecode.config import ConfigError, FlatConfig
from megdecode.twin.stimuli import FAMILIES


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
    # never-shown images drawn like exp images (random categories), candidates of the large
    # test set with distractors; the paper adds 3,659 to its 2,400 (~1.5x), as the presets do
    n_distractors: int = 30
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
            "n_groups": 1 <= self.n_groups <= len(FAMILIES) and self.n_groups <= self.n_categories,
            "n_test_categories": 0 <= self.n_test_categories <= self.n_categories,
            "n_distractors": self.n_distractors >= 0,
            "catch_fraction": 0.0 <= self.catch_fraction < 0.5,
            "sfreq": self.sfreq >= 100.0,
            "isi_jitter_s": 0.0 <= self.isi_jitter_s < self.isi_mean_s,
            "n_subjects": min(self.n_subjects, self.n_sessions, self.n_runs) >= 1,
            "snr": self.snr >= 0.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid TwinConfig field(s) {bad}: {[getattr(self, k) for k in bad]}"
            )

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
            return cls(
                seed=seed,
                n_subjects=4,
                n_sessions=4,
                n_runs=2,
                n_categories=100,
                n_groups=8,
                n_exp_per_category=6,
                n_test_categories=20,
                n_catch_images=10,
                n_distractors=180,
                image_size=96,
                sfreq=240.0,
                snr=0.6,
            )
        if size == "full":
            return cls(
                seed=seed,
                n_subjects=1,
                n_sessions=12,
                n_runs=10,
                n_categories=1854,
                n_groups=8,
                n_exp_per_category=12,
                n_test_categories=200,
                n_catch_images=100,
                n_distractors=3659,
                image_size=96,
                sfreq=1200.0,
            )
        raise ValueError(f"unknown twin preset {size!r}; choose tiny, demo or full")
