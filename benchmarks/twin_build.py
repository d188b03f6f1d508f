"""Build time and size of the MEG twin presets.

Builds `tiny` and `demo` (by default) into a temporary folder, one after the other in one
run, and prints trials, MEG channels, GB on disk, build seconds and trials per second.
`--full-sessions N` also builds the `full` preset cut to N of its 12 sessions (with N/12
of its categories, so runs keep their THINGS size: ~220 trials, ~5.6 min, ~0.45 GB at
1200 Hz) and extrapolates to the 12 sessions.
Usage: python benchmarks/twin_build.py [--presets tiny demo] [--n-jobs 2] [--full-sessions 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from megdecode.logs import setup_logging
from megdecode.twin.config import TwinConfig
from megdecode.twin.simulate import TwinSummary, simulate


def _row(name: str, s: TwinSummary, scale: float = 1.0) -> str:
    gb = s.bytes_on_disk / 1e9
    return (
        f"{name:<14} {int(s.n_trials * scale):>8} {s.n_channels:>5} {gb * scale:>9.3f} "
        f"{s.seconds * scale:>9.1f} {s.n_trials / s.seconds:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "demo"], choices=["tiny", "demo"])
    parser.add_argument("--n-jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--full-sessions",
        type=int,
        default=0,
        help="also build `full` with this many sessions (0 = skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the builds here")
    args = parser.parse_args()
    setup_logging("WARNING")

    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        out = args.out or Path(tmp)
        print(f"n_jobs={args.n_jobs} cpus={os.cpu_count()}")
        print(f"{'preset':<14} {'trials':>8} {'chans':>5} {'GB':>9} {'seconds':>9} {'trials/s':>9}")
        for name in args.presets:
            summary = simulate(
                TwinConfig.preset(name, seed=args.seed), out / name, n_jobs=args.n_jobs
            )
            print(_row(name, summary), flush=True)
        if args.full_sessions:
            cfg = TwinConfig.preset("full", seed=args.seed)
            # fewer sessions with the same runs per session: keep runs THINGS-sized by
            # cutting the exp categories in proportion (test images: once per session)
            n_cat = round(cfg.n_categories * args.full_sessions / cfg.n_sessions)
            part = cfg.replace(
                n_sessions=args.full_sessions,
                n_categories=n_cat,
                n_test_categories=min(cfg.n_test_categories, n_cat),
            )
            summary = simulate(part, out / "full", n_jobs=args.n_jobs)
            print(_row(f"full[{args.full_sessions}ses]", summary))
            print(_row("full (extrap)", summary, scale=cfg.n_sessions / args.full_sessions))


if __name__ == "__main__":
    main()
