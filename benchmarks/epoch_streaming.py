"""A trial's training on shared epochs vs epochs streamed from the store: speed and memory.

One seed of a small brain module trained a few epochs on the same run folder (target
twin-lowlevel, or handcrafted where the run has no twin latents), once on the
epochs a search shares (`search.shared.SharedEpochs`: every epoch of the store in memory
at the full window, which a trial maps from the object store) and once streamed from the
store (`search.streamed.StreamedEpochs`, a small buffer). Each mode runs in a fresh
interpreter, so its peak RSS is its own: the increase is the peak (VmHWM) minus the RSS
after imports, i.e. the data plus training ("data only": the peak after one pass over
every split, before training). Prints training samples/s (`train.fit`'s
``train_samples_per_s``: training and validation time per training epoch) and the peak RSS
increase of both modes, and the ratios stream / shared.

Usage: python benchmarks/epoch_streaming.py [--data runs/demo] [--epochs 3] [--buffer-rows 320]
Without a store at --data, the tiny twin is built in a temporary folder (seconds; its
25 MB of epochs show little memory difference: use the demo twin, `make demo`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _rss_kib(field: str) -> int:
    """A /proc/self/status memory line (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def child(mode: str, data: Path, epochs: int, buffer_rows: int, batch: int) -> dict[str, Any]:
    """Train one seed on `mode` ("shared" | "stream") data; what it cost."""
    import torch

    from megdecode.models.brain import BrainConfig
    from megdecode.rundata_stream import StreamConfig
    from megdecode.search.driver import data_paths
    from megdecode.search.shared import SharedEpochs
    from megdecode.search.streamed import StreamedEpochs
    from megdecode.train import fit
    from megdecode.train_config import FitConfig, TrainConfig

    torch.set_num_threads(1)
    store, latents_dir = data_paths(data)
    latent = (
        "twin-lowlevel" if (Path(latents_dir) / "twin-lowlevel.parquet").exists() else "handcrafted"
    )
    cfg = FitConfig(
        store=str(store),
        latents_dir=str(latents_dir),
        model=BrainConfig(hidden_channels=32, merger_channels=32, fourier_freqs=3, depth=1,
                          projection_hidden=32, backbone_dim=32),
        train=TrainConfig(latent=latent, tmin=0.0, tmax=0.6, batch_size=batch,
                          max_epochs=epochs, patience=epochs, seed=0),
    )  # fmt: skip
    before = _rss_kib("VmRSS")
    if mode == "shared":
        source: Any = SharedEpochs.load(store, latents_dir, [latent], reader="arrow")
    else:
        source = StreamedEpochs.load(store, latents_dir, [latent], StreamConfig(buffer_rows))
    data_ = source.run_data(cfg)
    for split in (data_.train, data_.val, data_.test):  # one pass each: what the data holds
        for _ in split.batches(batch, torch.Generator().manual_seed(0)):
            pass
    data_peak = _rss_kib("VmHWM")
    result = fit(cfg, data=data_)
    if mode == "shared":  # every epoch of the store, at the full window
        held = sum(len(m) for m in source.meta.values())
    else:
        held = max(s.peak_rows for s in (data_.train, data_.val, data_.test))
    return {
        "mode": mode,
        "samples_per_s": result.metrics["train_samples_per_s"],
        "rss_increase_mb": (_rss_kib("VmHWM") - before) / 1024,
        "data_rss_increase_mb": (data_peak - before) / 1024,
        "train_rows": len(data_.train.meta),
        "peak_rows": held,
        "val_top5": result.metrics["val/top5"],
    }


def _data(path: Path, scratch: Path) -> Path:
    if (path / "store" / "manifest.json").exists():
        return path
    from megdecode.demo import TwinRun, build_twin_run

    print(f"no store in {path}: building the tiny twin in {scratch}", flush=True)
    return Path(build_twin_run(TwinRun(size="tiny", seed=0), scratch / "tiny"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--buffer-rows", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=["shared", "stream"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        got = child(args.child, args.data, args.epochs, args.buffer_rows, args.batch_size)
        print(json.dumps(got))
        return
    with tempfile.TemporaryDirectory() as scratch:
        data = _data(args.data.resolve(), Path(scratch))
        rows = {}
        for mode in ("shared", "stream"):
            command = [sys.executable, __file__, "--child", mode, "--data", str(data),
                       "--epochs", str(args.epochs), "--buffer-rows", str(args.buffer_rows),
                       "--batch-size", str(args.batch_size)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
            rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"data {data}: {rows['shared']['train_rows']} training epochs, {args.epochs} epochs "
          f"of training, batch {args.batch_size}, stream buffer {args.buffer_rows} rows")  # fmt: skip
    print(f"{'mode':8} {'samples/s':>10} {'peak RSS +MB':>13} {'data only +MB':>14} "
          f"{'MEG rows held':>14} {'val/top5':>9}")  # fmt: skip
    for mode, r in rows.items():
        print(f"{mode:8} {r['samples_per_s']:10.1f} {r['rss_increase_mb']:13.1f} "
              f"{r['data_rss_increase_mb']:14.1f} {r['peak_rows']:14d} {r['val_top5']:9.3f}")  # fmt: skip
    shared, stream = rows["shared"], rows["stream"]
    print(f"stream / shared: samples/s {stream['samples_per_s'] / shared['samples_per_s']:.2f}, "
          f"peak RSS increase {stream['rss_increase_mb'] / shared['rss_increase_mb']:.2f}, "
          f"data only {stream['data_rss_increase_mb'] / shared['data_rss_increase_mb']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
