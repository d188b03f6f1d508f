"""What the generation evaluation logs to MLflow (a real SQLite store): every param, even
past MLflow's 100 per call, the metrics per kind, tables and figures."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from megdecode.generate.evaluation import GenEvalConfig, format_markdown, log_evaluation
from megdecode.tracking import Tracker

pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}", "report")


def _new_run(tracker: Tracker) -> str:
    return tracker.client.create_run(tracker.experiment_id).info.run_id


def test_log_params_logs_every_param_past_one_batch_and_keeps_logged_values(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = _new_run(tracker)
    params = {f"p{i:03d}": i for i in range(250)} | {"none": None}
    tracker.log_params(run_id, params)
    logged = tracker.client.get_run(run_id).data.params
    assert logged == {k: str(v) for k, v in params.items()}
    with caplog.at_level(logging.WARNING, logger="megdecode.tracking"):
        tracker.log_params(run_id, {"p000": "changed", "new": 1})  # params are immutable in MLflow
    logged = tracker.client.get_run(run_id).data.params
    assert (logged["p000"], logged["new"], len(logged)) == ("0", "1", 252)
    assert "p000" in caplog.text


def test_evaluation_logs_every_param_metrics_tables_and_figures(
    tracker: Tracker, tmp_path: Path
) -> None:
    table = pd.DataFrame(
        [
            {
                "kind": "averaged",
                "n": 3,
                "pixcorr": 0.25,
                "ssim": 0.5,
                "latent_r": 0.4,
                "pred_stats": "bundle (val, n=8)",
            },
            {
                "kind": "oracle",
                "n": 3,
                "pixcorr": 0.75,
                "ssim": 0.875,
                "latent_r": 1.0,
                "pred_stats": "not decoded",
            },
        ]
    )
    pd.DataFrame(
        {"kind": ["averaged", "single, test_large", "single, test_large"], "r": [0.4, 0.2, 0.3]}
    ).to_csv(tmp_path / "latent_fidelity.csv", index=False)
    (tmp_path / "metrics.md").write_text(format_markdown(table))
    grid = tmp_path / "grid.png"
    Image.new("RGB", (8, 8)).save(grid)
    params = {f"gen_eval.{k}": v for k, v in GenEvalConfig().to_flat_dict().items()}
    params |= {f"fit.extra{i}": i for i in range(120)}  # more than MLflow takes in one call
    run_id = _new_run(tracker)

    log_evaluation(tracker, run_id, params, table, grid, tmp_path)

    run = tracker.client.get_run(run_id)
    assert len(run.data.params) == len(params) > 100
    assert (
        run.data.params["gen_eval.pred_stats"] == "bundle"
        and run.data.params["fit.extra119"] == "119"
    )
    assert run.data.metrics["gen/oracle/ssim"] == 0.875
    assert run.data.metrics["gen/averaged/latent_r"] == 0.4
    assert run.data.metrics["gen/test_large/latent_r"] == pytest.approx(0.25)
    assert not any(k.endswith(("/n", "/pred_stats")) for k in run.data.metrics)
    assert run.data.tags["megdecode.gen_eval.pred_stats"] == "bundle (val, n=8)"
    assert {a.path for a in tracker.client.list_artifacts(run_id, "figures")} == {
        "figures/grid.png"
    }
    assert {a.path for a in tracker.client.list_artifacts(run_id, "tables")} == {
        "tables/generate_metrics.csv",
        "tables/metrics.md",
        "tables/latent_fidelity.csv",
    }


def test_markdown_table_rounds_floats_and_keeps_labels() -> None:
    table = pd.DataFrame([{"kind": "oracle", "n": 4, "ssim": 0.12345}])
    assert format_markdown(table) == "| kind | n | ssim |\n|---|---|---|\n| oracle | 4 | 0.123 |\n"
