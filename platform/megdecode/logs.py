"""Logging and progress set once at the entry point (CLI, job, serve app)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger; called by entry points only, never at import."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("mne", "mne_bids", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on an interactive stderr (or when MEGDECODE_PROGRESS=1), else plain.

    Bars are off in CI logs by default because they turn into thousands of lines.
    """
    force = os.environ.get("MEGDECODE_PROGRESS")
    show = force == "1" or (force is None and sys.stderr.isatty())
    if not show:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
