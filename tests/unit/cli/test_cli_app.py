"""The `megdecode` app: one command per stage in a run's order, its exit codes, `python -m`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from megdecode.cli import app, run
from megdecode.cli.common import fail

PLATFORM = Path(__file__).resolve().parents[3] / "platform"
RUN_ORDER = [
    "simulate",
    "preprocess",
    "latents",
    "demo",
    "train",
    "evaluate",
    "tune",
    "windows",
    "serve",
    "serve-example",
    "register",
    "train-generator",
    "reconstruct",
]


def test_help_lists_every_stage_in_a_runs_order() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    listed = [
        line.split()[1]
        for line in result.output.splitlines()
        if line.startswith("│ ") and line.split()[1] in RUN_ORDER
    ]
    assert listed == RUN_ORDER


def test_run_returns_the_exit_status() -> None:
    assert run(["--help"]) == 0
    assert run(["no-such-stage"]) == 2  # a usage error
    assert run(["train"]) == 2  # --data missing: a usage error too


def test_fail_says_why_on_stderr_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_info:
        fail("no bundle in run abc")
    assert exit_info.value.exit_code == 1
    assert capsys.readouterr().err == "error: no bundle in run abc\n"


def test_python_dash_m_runs_the_command() -> None:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(PLATFORM), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run(
        [sys.executable, "-m", "megdecode.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "python -m megdecode.cli" in done.stdout and "train-generator" in done.stdout
