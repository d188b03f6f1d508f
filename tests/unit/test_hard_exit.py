"""The suite's hard exit (`fixtures.hard_exit`, loaded by tests/conftest.py) keeps the status
the run would have ended with, on every path: pytest is run in a subprocess on a generated
test folder that loads the plugin, and a late atexit handler (registered before the plugin's,
so it would run after it) shows whether the interpreter's teardown was skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]  # holds the `fixtures` package

CONFTEST = """
import atexit, sys
from pathlib import Path

import pytest

pytest_plugins = ("fixtures.hard_exit",)
# registered before the plugin's exit handler, so it runs only if the teardown is not skipped
atexit.register(lambda: Path("teardown_ran").write_text("yes"))
"""

HOOKS = {
    "passes": "",
    "fails": "",
    "sessionfinish_raises": """
def pytest_sessionfinish(session):
    raise RuntimeError("boom in sessionfinish")
""",
    "unconfigure_raises": """
def pytest_unconfigure(config):
    raise RuntimeError("boom in unconfigure")
""",
    "sessionfinish_exits_4": """
def pytest_sessionfinish(session):
    raise SystemExit(4)
""",
    "flush_fails": """
class Broken:
    def write(self, text):
        return len(text)

    def flush(self):
        raise OSError("stdout is gone")


def pytest_sessionstart(session):
    # registered after the plugin's handler: runs before it, as a late handler of Ray would
    atexit.register(lambda: setattr(sys, "stdout", Broken()))
""",
}


def _run(tmp_path: Path, case: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST + HOOKS[case])
    body = "assert 1 == 2" if case == "fails" else "assert 1 == 1"
    (tmp_path / "test_one.py").write_text(f"def test_one():\n    {body}\n")
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # faster start; the plugin under test is named
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("passes", 0, "1 passed"),
        ("fails", 1, "1 failed"),
        ("sessionfinish_raises", 1, "boom in sessionfinish"),
        ("unconfigure_raises", 1, "boom in unconfigure"),
        ("sessionfinish_exits_4", 4, "[100%]"),
        ("flush_fails", 120, "1 passed"),
    ],
)
def test_the_hard_exit_keeps_the_status_of_the_run(
    tmp_path: Path, case: str, status: int, says: str
) -> None:
    done = _run(tmp_path, case)
    output = done.stdout + done.stderr
    assert done.returncode == status, output
    assert says in output
    assert not (tmp_path / "teardown_ran").exists(), "the interpreter's teardown ran"
