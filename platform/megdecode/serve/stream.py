"""What online preprocessing of one subject needs, taken from a model bundle, and its errors.

`StreamSpec.from_bundle` checks that a bundle can stream (it records its preprocessing,
the subject's training scaler and the native rate) and says why not otherwise.
`megdecode.serve.online_preprocess` turns raw chunks into model windows with it, and
`megdecode.serve.stream_session` schedules the decodes of one connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from megdecode.bundle import ModelBundle
from megdecode.data.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)


class StreamError(ValueError):
    """The stream cannot run (bundle lacks fields, bad chunk); the message says why."""


@dataclass(frozen=True)
class StreamSpec:
    """What online preprocessing of one subject needs; from the bundle's ``preprocess`` and ``scalers``.

    center, scale: (C,) the subject's robust scaler (median / IQR of training epochs).
    """

    preprocess: PreprocessConfig
    sfreq_in: float
    center: np.ndarray
    scale: np.ndarray
    tmin: float
    tmax: float
    n_times: int

    @property
    def matches_training(self) -> bool:
        """Whether online windows equal the training ones: the store ran no band-pass (the
        "paper" preset: resampling and baseline only, which the stream reproduces
        exactly) or ran it causally, as the stream does."""
        return not self.preprocess.band_pass or self.preprocess.filter_phase == "causal"

    @classmethod
    def from_bundle(
        cls, bundle: ModelBundle, subject: str, sfreq: float | None = None
    ) -> StreamSpec:
        cfg = bundle.preprocess
        if cfg is None or not bundle.scalers:
            missing = [
                name
                for name, absent in (("preprocess", cfg is None), ("scalers", not bundle.scalers))
                if absent
            ]
            raise StreamError(
                f"this model bundle has no {' / '.join(missing)} (its store recorded none): "
                "retrain it on a store built by `megdecode preprocess` to stream"
            )
        scaler = bundle.scalers.get(subject)
        if scaler is None:
            raise StreamError(f"the bundle has no scaler for subject {subject!r}")
        sfreq_in = float(sfreq or scaler.raw_sfreq or 0)
        if sfreq_in <= 0:
            raise StreamError(
                "the bundle does not record the native sampling rate; send 'sfreq' in the start message"
            )
        if sfreq_in < cfg.sfreq:
            raise StreamError(f"sfreq {sfreq_in} Hz is below the model's {cfg.sfreq} Hz")
        if not np.isclose(cfg.sfreq, bundle.sfreq):
            raise StreamError(
                f"the bundle's preprocessing rate {cfg.sfreq} Hz differs from its window rate {bundle.sfreq} Hz"
            )
        return cls(
            cfg, sfreq_in, scaler.center, scaler.scale, bundle.tmin, bundle.tmax, bundle.n_times
        )
