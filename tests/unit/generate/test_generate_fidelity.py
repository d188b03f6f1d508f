"""Per-dimension latent fidelity: r against a brute-force np.corrcoef, alignment by image id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megdecode.generate.fidelity import (
    columnwise_r,
    dimension_labels,
    latent_fidelity,
    plot_fidelity,
    summarise,
)
from megdecode.twin.stimuli import LOW_LEVEL


def test_columnwise_r_matches_corrcoef_per_column() -> None:
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((40, 6))
    pred = truth * np.linspace(0, 2, 6) + rng.standard_normal((40, 6))
    expected = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(6)]
    np.testing.assert_allclose(columnwise_r(pred, truth), expected, atol=1e-12)


def test_constant_columns_and_tiny_sets_give_nan_not_numbers() -> None:
    truth = np.random.default_rng(1).standard_normal((10, 2))
    pred = truth.copy()
    pred[:, 1] = 3.0
    r = columnwise_r(pred, truth)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])
    assert np.isnan(columnwise_r(pred[:2], truth[:2])).all()
    with pytest.raises(ValueError, match="one shape"):
        columnwise_r(pred, truth[:, :1])


def test_labels_name_the_twin_factors_and_number_the_rest() -> None:
    labels = dimension_labels([("handcrafted", 2), ("twin-lowlevel", len(LOW_LEVEL))])
    assert labels[:2] == [("handcrafted", "0"), ("handcrafted", "1")]
    assert [d for _, d in labels[2:]] == list(LOW_LEVEL)


def test_fidelity_aligns_rows_by_image_id_and_refuses_unknown_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    truth_ids = np.array([7, 3, 5, 11, 2])
    truth = rng.standard_normal((5, 3))
    # trials listed in another order, with repetitions: a perfect decode must give r = 1
    ids = np.array([5, 2, 7, 7, 11, 3, 2])
    perfect = truth[[list(truth_ids).index(i) for i in ids]] * 2.0 + 1.0
    table = latent_fidelity(
        {"single": perfect, "random": rng.standard_normal((7, 3))},
        {"single": ids, "random": ids},
        truth,
        truth_ids,
        [("a", 1), ("b", 2)],
    )
    assert table.groupby("kind").size().to_dict() == {"single": 3, "random": 3}
    np.testing.assert_allclose(table.loc[table.kind == "single", "r"], 1.0)
    assert table["part"].tolist()[:3] == ["a", "b", "b"]
    summary = summarise(table)
    assert summary.loc[(summary.kind == "single") & (summary.part == "b"), "dims"].item() == 2
    assert Image.open(plot_fidelity(table, tmp_path / "f.png")).width > 0
    with pytest.raises(KeyError, match="no ground-truth"):
        latent_fidelity({"single": perfect}, {"single": ids + 100}, truth, truth_ids, [("a", 3)])
