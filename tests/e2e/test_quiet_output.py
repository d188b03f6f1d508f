"""The terminal of `megdecode tune`: our stage lines, one line per trial and the summary by
default; Ray's, Ray Data's and Tune's own output in the log file it names; all of it with -v."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SPACE = """
name: quiet
seeds: 1
num_samples: 2
max_concurrent: 1
max_epochs: 2
grace_period: 1
fixed:
  train.latent: handcrafted
  train.tmin: 0.0
  train.tmax: 0.5
  train.batch_size: 32
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
params:
  model.depth: {type: int, low: 1, high: 2}
"""
# What flooded the terminal before: Tune's status tables, Ray Data's progress log, workers' lines.
FLOOD = ("== Status ==", "Total Progress", "Execution plan", "(run_trial pid=", "Number of trials")


def _tune(run: Path, tmp_path: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "MEGDECODE_PROGRESS": "0",
        "HF_HUB_OFFLINE": "1",
        "MEGDECODE_LOG_FILE": str(tmp_path / f"{name}.log"),
    }
    env.pop("MEGDECODE_VERBOSE", None)
    cmd = [
        sys.executable,
        "-m",
        "megdecode.cli",
        *flags,
        "tune",
        "--space",
        str(tmp_path / "space.yaml"),
        "--data",
        str(run),
        "--out",
        str(tmp_path / name),
        "--experiment",
        name,
        "--no-register",
        "--tracking-uri",
        f"sqlite:///{tmp_path / name}.db",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quiet_run")
    shutil.copytree(tiny_run / "store", root / "store")
    shutil.copytree(tiny_run / "latents", root / "latents")
    return root


def test_quiet_by_default_and_everything_with_v(run: Path, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    quiet = _tune(run, tmp_path, "quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    shown = quiet.stdout + quiet.stderr
    assert not [f for f in FLOOD if f in shown], shown
    lines = shown.splitlines()
    assert len(lines) < 40, shown
    assert (
        len(re.findall(r"trials [12]/2: trial_000[12]_\w+ (finished|stopped) at epoch \d", shown))
        == 2
    ), shown
    assert "rank" in shown and "chance" in shown  # the summary table
    log = tmp_path / "quiet.log"
    assert sum(str(log) in line for line in lines) == 1, shown  # the path, printed once
    kept = log.read_text()
    assert "Execution plan" in kept or "Total Progress" in kept or "Starting execution" in kept, (
        kept[-2000:]
    )

    loud = _tune(run, tmp_path, "loud", "-v")
    assert loud.returncode == 0, loud.stdout + loud.stderr
    streamed = loud.stdout + loud.stderr
    assert "== Status ==" in streamed or "Number of trials" in streamed, streamed[-3000:]
    assert "Starting execution" in streamed or "Execution plan" in streamed, streamed[-3000:]
    assert len(streamed.splitlines()) > len(lines)
