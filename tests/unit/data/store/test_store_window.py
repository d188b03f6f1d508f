"""`window_slice`: the one rule that cuts a window (tmin, tmax in s) out of sampled epochs."""

from __future__ import annotations

import numpy as np
import pytest

from megdecode.data.store import window_slice

# 120 Hz from -0.5 s, as the store writes them (Python floats, tmin + i / sfreq): -0.5, ..., 1.0
SFREQ = 120.0
TIMES = [-0.5 + i / SFREQ for i in range(181)]


def test_both_bounds_are_inclusive_on_hand_written_times() -> None:
    times = [-0.2, -0.1, 0.0, 0.1, 0.2, 0.3]
    assert window_slice(times, 10.0, 0.0, 0.2) == slice(2, 5)
    assert window_slice(times, 10.0, -0.15, 0.25) == slice(
        1, 5
    )  # bounds between samples keep the inner ones
    assert window_slice(times, 10.0, None, 0.0) == slice(0, 3)
    assert window_slice(times, 10.0, 0.1, None) == slice(3, 6)
    assert window_slice(times, 10.0, 0.1, 0.1) == slice(3, 4)  # a single sample
    with pytest.raises(ValueError, match="holds no samples"):
        window_slice(times, 10.0, 0.41, 0.5)
    with pytest.raises(ValueError, match="holds no samples"):
        window_slice(times, 10.0, 0.12, 0.18)


def test_rounding_of_times_and_bounds_never_drops_an_end_sample() -> None:
    # 0.1 + 0.2 != 0.3 in floats; so are the store's times off the exact grid by ~1e-16
    times = np.array([0.0, 0.1, 0.2, 0.1 + 0.2])
    assert window_slice(times, 10.0, 0.0, 0.3) == slice(0, 4)
    assert window_slice(times, 10.0, 0.1 + 0.2, None) == slice(3, 4)
    assert window_slice(TIMES, SFREQ, 0.0, 0.5) == slice(60, 121)  # 61 samples, both ends
    # the curves' times (numpy, tmin + arange / sfreq) cut the same windows as the store's
    grid = -0.5 + np.arange(181) / SFREQ
    for k in range(61):  # every bound of the search spaces' 25 ms grid
        t = round(-0.5 + 0.025 * k, 9)
        assert window_slice(TIMES, SFREQ, t, None) == window_slice(grid, SFREQ, t, None)
        assert window_slice(TIMES, SFREQ, None, t) == window_slice(grid, SFREQ, None, t)
        assert TIMES[window_slice(TIMES, SFREQ, t, None).start] == pytest.approx(t, abs=1e-12)


def test_a_bound_a_fraction_of_a_sample_off_the_grid_does_not_move_the_window() -> None:
    """The tolerance is a millionth of a sample: far below any real bound's offset."""
    assert window_slice(TIMES, SFREQ, 0.0 + 1e-9, 0.5 - 1e-9) == slice(60, 121)
    assert window_slice(TIMES, SFREQ, 0.0 + 1e-3 / SFREQ, 0.5 - 1e-3 / SFREQ) == slice(61, 120)
