"""`make serve` after `make demo`, as a user runs them: the champion and its generator come up
on a 2-CPU machine, answer, and Ctrl-C (or SIGTERM) stops Serve and the Ray it started;
a config that cannot fit fails fast, naming what does not fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_demo import TINY_SPACE

from megdecode.serve.app import free_port
from megdecode.serve.demo import post_honouring_retry_after

pytestmark = [pytest.mark.slow, pytest.mark.serve, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN_S = (
    240  # a cold start on a busy 2-core machine: Ray, Serve, three replicas, the model twice
)
STOP_WITHIN_S = 20


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MEGDECODE_PROGRESS": "0",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`megdecode demo` on the tiny twin with a 2-trial search and a 5 s generator."""
    root = tmp_path_factory.mktemp("make_serve")
    (root / "space.yaml").write_text(TINY_SPACE)
    out = root / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "megdecode.cli",
            "demo",
            "--out",
            str(out),
            "--size",
            "tiny",
            "--space",
            str(root / "space.yaml"),
            "--generator-seconds",
            "5",
            "--generator-steps",
            "3",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "generator" / "generator.json").is_file() and (out / "window.json").is_file()
    return out


# --- processes --------------------------------------------------------------------------------
def _table() -> dict[int, tuple[int, str, str]]:
    """{pid: (ppid, start time, state)} of every process, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(stat.parent.name)] = (int(fields[1]), fields[19], fields[0])
    return out


class Descendants(threading.Thread):
    """Every process below `root` seen while it runs (pid and start time: pids are reused)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.seen, self.done = root, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            table = _table()
            mine, frontier = set(), {self.root}
            while frontier:
                frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - mine
                mine |= frontier
            self.seen.update({pid: table[pid][1] for pid in mine})
            time.sleep(0.3)

    def alive(self) -> list[int]:
        table = _table()
        return [
            pid
            for pid, start in self.seen.items()
            if pid in table and table[pid][1] == start and table[pid][2] != "Z"
        ]


class Make:
    """`make serve ...` in its own process group (a terminal's job), its output collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"PY={sys.executable}", *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.tree = Descendants(self.proc.pid)
        self.tree.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while text not in self.output:
            assert self.proc.poll() is None, (
                f"exited {self.proc.returncode}:\n{self.output[-4000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no {text!r} within {within_s} s:\n{self.output[-4000:]}"
            )
            time.sleep(0.5)

    def serve_pid(self) -> int:
        """The `megdecode serve` process (make's child)."""
        return next(pid for pid, (ppid, _, _) in _table().items() if ppid == self.proc.pid)

    def finish(self, within_s: float) -> tuple[int, float]:
        """(make's exit status, seconds it took) once it exits; the process tree must be gone too."""
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout=within_s)
        finally:
            self.tree.done.set()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while self.tree.alive() and time.monotonic() < deadline:  # what the exit just released
            time.sleep(0.2)
        return code, elapsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def make_serve() -> Iterator[list[Make]]:
    started: list[Make] = []
    yield started
    for m in started:
        m.kill()


def _ready(url: str, within_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"/readyz did not answer 200 within {within_s} s")


# --- tests ------------------------------------------------------------------------------------
def test_make_serve_after_make_demo_answers_and_ctrl_c_stops_it(
    demo_out: Path, make_serve: list[Make]
) -> None:
    port = free_port()
    m = Make(f"DEMO_OUT={demo_out}", f"SERVE_PORT={port}")
    make_serve.append(m)
    url = f"http://127.0.0.1:{port}"
    _ready(url, READY_WITHIN_S)
    m.wait_for("Ctrl-C stops", 120)  # every deployment runs, the generator included
    assert "Generator 1 x 0.8 CPU (derived)" in m.output and "2 of 2 CPU" in m.output, m.output
    body = (demo_out / "window.json").read_bytes()
    decoded, _ = post_honouring_retry_after(  # a loaded runner may shed the first decode
        requests.Session(),
        f"{url}/v1/decode",
        data=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert decoded.status_code == 200, decoded.text
    assert len(decoded.json()["top_k"]) == 5
    png = requests.post(
        f"{url}/v1/reconstruct",
        data=body,
        params={"steps": 2},
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text[:300]
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(m.tree.seen) > 3  # make, megdecode serve, Ray's GCS, raylet, workers...
    os.kill(m.serve_pid(), signal.SIGINT)  # Ctrl-C, as the serve process sees it
    code, seconds = m.finish(STOP_WITHIN_S)
    assert code == 0, m.output[-3000:]
    assert seconds < STOP_WITHIN_S
    assert "SIGINT: shutting down" in m.output and "stopping" in m.output
    assert "Error" not in m.output and "Traceback" not in m.output, m.output[-3000:]
    assert m.tree.alive() == [], m.tree.alive()


def test_ctrl_c_on_the_terminal_and_sigterm_stop_serve_and_its_ray(
    demo_out: Path, make_serve: list[Make]
) -> None:
    """A terminal's Ctrl-C reaches the whole process group (make, megdecode, Ray's daemons);
    SIGTERM (a service manager) reaches megdecode alone. Both leave nothing running."""
    for how in ("group SIGINT", "SIGTERM"):
        port = free_port()
        m = Make(f"DEMO_OUT={demo_out}", f"SERVE_PORT={port}")
        make_serve.append(m)
        m.wait_for("Ctrl-C stops", READY_WITHIN_S)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 200
        if how == "SIGTERM":
            os.kill(m.serve_pid(), signal.SIGTERM)
        else:
            os.killpg(m.proc.pid, signal.SIGINT)
        code, seconds = m.finish(STOP_WITHIN_S)
        # make, interrupted itself, re-raises SIGINT once its child is done (-2); after SIGTERM to
        # megdecode alone, megdecode's own exit status is make's
        assert code == (-signal.SIGINT if how == "group SIGINT" else 0), (
            how,
            code,
            m.output[-3000:],
        )
        assert "make: ***" not in m.output, m.output[-3000:]  # megdecode itself exited 0
        assert seconds < STOP_WITHIN_S, how
        assert "shutting down" in m.output and "stopping" in m.output, m.output[-3000:]
        assert m.tree.alive() == [], (how, m.tree.alive())


def test_a_config_that_cannot_fit_fails_fast_naming_what_does_not_fit(
    demo_out: Path, tmp_path: Path, make_serve: list[Make]
) -> None:
    config = (ROOT / "serve_apps" / "config.yaml").read_text()
    assert (
        "num_cpus: null             # null: derived from the cluster (1 CPU per replica" in config
    )
    big = config.replace(
        "num_cpus: null             # null: derived from the cluster (1 CPU per replica",
        "num_cpus: 8  #",
        1,
    )
    (tmp_path / "big.yaml").write_text(big)
    m = Make(
        f"DEMO_OUT={demo_out}",
        f"SERVE_PORT={free_port()}",
        f"SERVE_ARGS=--config {tmp_path / 'big.yaml'}",
    )
    make_serve.append(m)
    code, seconds = m.finish(90)
    assert code != 0
    assert seconds < 90
    assert (
        "BrainDecoder asks 8 CPU per replica (decoder.num_cpus); the cluster has 2" in m.output
    ), m.output[-3000:]
    assert "Traceback" not in m.output
    assert m.tree.alive() == [], m.tree.alive()
