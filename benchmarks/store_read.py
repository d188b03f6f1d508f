"""Epochs per second read back from the epoch store: `load_epochs` vs Ray Data.

Writes a THINGS-shaped store (default 2000 epochs of 272 x 181 float32, two subjects,
one block per 250-epoch run) to a temporary folder, then in one run times
`shards.load_epochs` (everything into one array) and iterating
`shards.read_ray_dataset(...).iter_batches(batch_format="numpy")` on a local Ray (a cold
pass that pays worker start-up, then a warm pass), and prints the rates and their ratio. `--rows-per-file 8` shows what tiny files cost.
Usage: python benchmarks/store_read.py [--epochs 2000] [--rows-per-file 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.data import shards

C, T, RUN = 272, 181, 250


@dataclass
class _Block:
    data: np.ndarray
    metadata: pd.DataFrame
    ch_names: list[str] = field(default_factory=lambda: [f"M{i:03d}-1609" for i in range(C)])
    sfreq: float = 120.0
    tmin: float = -0.5
    pos2d: np.ndarray = field(default_factory=lambda: np.zeros((C, 2)))
    pos3d: np.ndarray = field(default_factory=lambda: np.zeros((C, 3)))


def blocks(n_epochs: int, seed: int = 0):  # type: ignore[no-untyped-def]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--rows-per-file", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default all)")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        start = time.perf_counter()
        manifest = shards.write_store(
            store,
            blocks(args.epochs),
            rows_per_file=args.rows_per_file,
            row_group_rows=min(256, args.rows_per_file),
        )
        write_s = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in store.rglob("*.parquet")) / 1e6
        print(
            f"store: {manifest.n_epochs} epochs of {C}x{T} float32, {len(manifest.files)} files, "
            f"{size_mb:.0f} MB, written in {write_s:.1f} s ({manifest.n_epochs / write_s:.0f} rows/s)"
        )

        start = time.perf_counter()
        X, _ = shards.load_epochs(store)
        local_s = time.perf_counter() - start
        local = len(X) / local_s
        print(f"load_epochs:              {len(X)} rows in {local_s:6.2f} s = {local:8.0f} rows/s")
        del X

        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            rates = [_ray_pass(store, args.batch_size) for _ in range(2)]
        finally:
            ray.shutdown()
        for label, (n, seconds) in zip(("cold (worker start-up)", "warm"), rates, strict=True):
            print(
                f"ray iter_batches, {label:22s}: {n} rows in {seconds:6.2f} s = "
                f"{n / seconds:8.0f} rows/s"
            )
        warm = rates[1][0] / rates[1][1]
        print(f"ratio load_epochs / ray iter_batches (warm): {local / warm:.2f}")


def _ray_pass(store: Path, batch_size: int) -> tuple[int, float]:
    """One full pass of numpy batches through Ray Data: (rows, seconds)."""
    start = time.perf_counter()
    n = 0
    for batch in shards.read_ray_dataset(store).iter_batches(
        batch_size=batch_size, batch_format="numpy"
    ):
        assert batch["meg"].shape[1:] == (C, T) and batch["meg"].dtype == np.float32
        n += len(batch["meg"])
    return n, time.perf_counter() - start


if __name__ == "__main__":
    main()
