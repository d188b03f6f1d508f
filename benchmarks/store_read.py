"""Epochs per second read back from the epoch store, with and without its integrity checks.

Writes a THINGS-shaped store (default 2000 epochs of 272 x 181 float32, two subjects,
one block per 250-epoch run) to a temporary folder, then in one run times, in rotating
order over --rounds (ratios are medians of per-round pairs; the files sit in the page
cache after a warm-up, so this is what the checks cost on top of a read from memory, the
worst case for them):

- `epoch_store.load_epochs` with no checks, seals only (size + magic + footer sha256 per
  file), page CRCs only, both (the default), and the full sha256 of every file before
  reading (the explicit full check), plus `verify_store` alone;
- iterating `epoch_store.read_ray_dataset(...).iter_batches(batch_format="numpy")` on a
  local loopback Ray (a cold pass that pays worker start-up, then warm passes) with the
  default checks and with none, next to ``ray.data.read_parquet`` over the same files
  (Ray's own reader, which cannot verify page checksums in its default V2 path);

and prints the rates, the ratios to the unchecked read, and what a full sha256 of a
THINGS-size store (~21 GB) costs at the measured hash rate. `--rows-per-file 8` shows
what tiny files cost.

Usage: python benchmarks/store_read.py [--epochs 2000] [--rows-per-file 1024] [--rounds 7]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.data import store as epoch_store
from megdecode.data.store import ReadChecks

C, T, RUN = 272, 181, 250
THINGS_BYTES = 21e9  # DESIGN §7: 4 x ~27k epochs x 271 x 181 float32

LOCAL: dict[str, ReadChecks] = {
    "no checks": ReadChecks(seals=False, pages=False),
    "seals only": ReadChecks(seals=True, pages=False),
    "page CRCs only": ReadChecks(seals=False, pages=True),
    "seals + page CRCs (default)": ReadChecks(),
    "full sha256, then read": ReadChecks(full=True, pages=False),
}


@dataclass
class _Block:
    data: np.ndarray
    metadata: pd.DataFrame
    ch_names: list[str] = field(default_factory=lambda: [f"M{i:03d}-1609" for i in range(C)])
    sfreq: float = 120.0
    tmin: float = -0.5
    pos2d: np.ndarray = field(default_factory=lambda: np.zeros((C, 2)))
    pos3d: np.ndarray = field(default_factory=lambda: np.zeros((C, 3)))


def blocks(n_epochs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, n_epochs, RUN):
        n = min(RUN, n_epochs - start)
        subject = f"BENCH{1 + (start // RUN) % 2}"
        meta = pd.DataFrame({
            "subject": subject, "session": "01", "run": f"{start // RUN:02d}",
            "trial_index": np.arange(n), "image_id": start + np.arange(n), "category_id": 0,
            "category": "cat", "trial_type": "exp", "image_path": "images_meg/cat/cat_01b.png",
            "split": "train", "repetition": 0, "onset_sample": np.arange(n) * 180,
        })  # fmt: skip
        yield _Block(rng.standard_normal((n, C, T), dtype=np.float32), meta)


@dataclass
class Timed:
    rows: int
    seconds: list[float]  # one per round

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _rounds(runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, Timed]:
    """Each callable once per round, the order rotated every round."""
    names = list(runs)
    timed = {name: Timed(0, []) for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            timed[name].rows = runs[name]()
            timed[name].seconds.append(time.perf_counter() - start)
    return timed


def _print_rates(title: str, results: dict[str, Timed], baseline: str) -> None:
    """Rates from the median round; the ratio is the median over rounds of the paired
    ratio (this round's rate over this round's baseline rate): a machine whose load
    drifts between rounds slows both sides of a pair alike."""
    base = results[baseline].seconds
    print(
        f"\n{title} ({len(base)} rounds; ratio = rows/s over '{baseline}', median of paired rounds)"
    )
    for name, t in results.items():
        ratio = statistics.median(b / s for b, s in zip(base, t.seconds, strict=True))
        print(
            f"  {name:34s} {t.rows} rows in {t.median:6.2f} s (best {min(t.seconds):5.2f}) = "
            f"{t.rows / t.median:8.0f} rows/s   ratio {ratio:5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--rows-per-file", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default all)")
    parser.add_argument("--no-ray", action="store_true", help="only the local reader")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        start = time.perf_counter()
        manifest = epoch_store.write_store(
            store,
            blocks(args.epochs),
            rows_per_file=args.rows_per_file,
            row_group_rows=min(256, args.rows_per_file),
        )
        write_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in store.rglob("*.parquet"))
        print(
            f"store: {manifest.n_epochs} epochs of {C}x{T} float32, {len(manifest.files)} files, "
            f"{size / 1e6:.0f} MB, written in {write_s:.1f} s ({manifest.n_epochs / write_s:.0f} "
            "rows/s, page checksums + content digest + sha256 included)"
        )
        epoch_store.load_epochs(store)  # warm-up: every file in the page cache

        def local(checks: ReadChecks) -> Callable[[], int]:
            return lambda: len(epoch_store.load_epochs(store, checks=checks)[0])

        results = _rounds({name: local(c) for name, c in LOCAL.items()}, args.rounds)
        _print_rates("load_epochs", results, "no checks")
        default, full = results["seals + page CRCs (default)"], results["full sha256, then read"]
        slower = statistics.median(
            f / d for f, d in zip(full.seconds, default.seconds, strict=True)
        )
        print(f"  full sha256 + read takes {slower:.2f}x the default read's time (paired rounds)")

        checks = {
            "verify_store (full sha256)": lambda: epoch_store.verify_store(store).n_epochs,
            "seals of every file": lambda: _seals(store),
        }
        timed = _rounds(checks, args.rounds)
        hash_s = timed["verify_store (full sha256)"].median
        seal_s = timed["seals of every file"].median
        n_files = len(manifest.files)
        print(
            f"\nverify_store: {size / 1e6:.0f} MB in {hash_s:.2f} s = "
            f"{size / hash_s / 1e9:.2f} GB/s; seals of {n_files} files: {1e3 * seal_s:.1f} ms "
            f"({1e3 * seal_s / n_files:.2f} ms per file)"
        )
        scale = THINGS_BYTES / size
        print(
            f"a THINGS-size store (~{THINGS_BYTES / 1e9:.0f} GB): "
            f"full sha256 ~{scale * hash_s:.0f} s at this rate from memory (more from disk); "
            f"seals ~{scale * seal_s:.2f} s "
            "(files of this store's size)"
        )

        if not args.no_ray:
            _ray_benchmark(store, args.batch_size, args.rounds, args.num_cpus)


def _seals(store: Path) -> int:
    manifest = epoch_store.read_manifest(store)
    epoch_store.check_files(store, manifest, manifest.files, ReadChecks(pages=False))
    return manifest.n_epochs


def _ray_benchmark(store: Path, batch_size: int, rounds: int, num_cpus: int | None) -> None:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    paths = [str(store / f.path) for f in epoch_store.read_manifest(store).files]
    try:
        cold = _ray_pass(lambda: epoch_store.read_ray_dataset(store), batch_size)
        print(
            f"\nray iter_batches, cold (worker start-up): {cold[0]} rows in {cold[1]:6.2f} s = "
            f"{cold[0] / cold[1]:8.0f} rows/s"
        )
        unchecked = ReadChecks(seals=False, pages=False)
        datasets = {
            "ray.data.read_parquet (unchecked)": lambda: ray.data.read_parquet(
                paths, partitioning=None
            ),
            "read_ray_dataset, no checks": lambda: epoch_store.read_ray_dataset(
                store, checks=unchecked
            ),
            "read_ray_dataset (default checks)": lambda: epoch_store.read_ray_dataset(store),
        }
        runs = {
            name: functools.partial(_ray_rows, make, batch_size) for name, make in datasets.items()
        }
        results = _rounds(runs, rounds)
        _print_rates("ray iter_batches, warm", results, "read_ray_dataset, no checks")
        start = time.perf_counter()
        local_rate = len(epoch_store.load_epochs(store)[0]) / (time.perf_counter() - start)
        warm = results["read_ray_dataset (default checks)"]
        ratio = local_rate / (warm.rows / warm.median)
        print(f"ratio load_epochs / read_ray_dataset (both checked, warm): {ratio:.2f}")
    finally:
        ray.shutdown()


def _ray_rows(make, batch_size: int) -> int:
    return _ray_pass(make, batch_size)[0]


def _ray_pass(make, batch_size: int) -> tuple[int, float]:
    """One full pass of numpy batches through Ray Data: (rows, seconds)."""
    start = time.perf_counter()
    n = 0
    for batch in make().iter_batches(batch_size=batch_size, batch_format="numpy"):
        assert batch["meg"].shape[1:] == (C, T) and batch["meg"].dtype == np.float32
        n += len(batch["meg"])
    return n, time.perf_counter() - start


if __name__ == "__main__":
    main()
