"""The object-store budget of a search's shared epochs (`search.epoch_memory`), from the manifest."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from megdecode.search.epoch_memory import (
    EpochBytes,
    memory_problem,
    object_store_budget,
    shared_epoch_bytes,
)

MANIFEST = cast(
    Any,
    SimpleNamespace(
        counts={
            "A": {"train": 10, "val": 2, "test": 3, "test_large": 4, "other": 100},
            "B": {"train": 5, "val": 1, "test": 3},
        },
        ch_names=["c"] * 7,
        times=[0.0] * 11,
    ),
)


def test_bytes_count_the_shared_splits_of_the_chosen_subjects() -> None:
    every = shared_epoch_bytes(MANIFEST)
    assert (every.rows, every.subjects, every.channels, every.samples) == (28, 2, 7, 11)
    assert every.nbytes == 28 * 7 * 11 * 4  # "other" rows are not shared with trials
    one = shared_epoch_bytes(MANIFEST, subjects=["B"], samples=5)
    assert one.nbytes == 9 * 7 * 5 * 4
    with pytest.raises(KeyError, match="not in the store"):
        shared_epoch_bytes(MANIFEST, subjects=["Z"])


def test_budget_is_a_fraction_of_the_smallest_node_unless_given() -> None:
    assert object_store_budget([1000.0, 400.0], 0.5) == 200
    assert object_store_budget([1000.0, 400.0], 0.5, budget_bytes=7) == 7
    assert object_store_budget([], 0.5, budget_bytes=0) == 0
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="max_object_store_fraction"):
            object_store_budget([1000.0], fraction)
    with pytest.raises(ValueError, match="no alive node"):
        object_store_budget([], 0.5)
    with pytest.raises(ValueError, match="bytes >= 0"):
        object_store_budget([1000.0], 0.5, budget_bytes=-1)


def test_refusal_says_what_it_needs_and_what_it_has() -> None:
    need = EpochBytes(rows=3000, subjects=4, channels=271, samples=181)
    assert memory_problem(need, need.nbytes) is None
    problem = memory_problem(need, need.nbytes - 1)
    assert problem is not None
    assert f"({need.nbytes} bytes)" in problem and f"({need.nbytes - 1} bytes)" in problem
    assert "3000 epochs of 4 subjects x 271 channels x 181 samples x 4 bytes float32" in problem
    assert "--max-object-store-fraction" in problem
