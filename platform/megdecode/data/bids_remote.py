"""A BIDS root on an object store, made readable by mne-bids (which reads local files only).

The preprocessing stage calls these instead of `megdecode.data.bids` directly; for a
local root they are that module (nothing is copied). For an ``s3://`` / ``gs://`` root:

- `find_runs` lists the bucket once and runs `bids.find_runs` on a skeleton of the tree
  (the sidecar files fetched, each recording an empty placeholder), so run discovery and
  its errors are the local ones;
- `fetched_run` copies one run's files (its recording, sidecars, the session's and the
  dataset's tables, the subject's sample attributes) to a temporary folder inside the task
  that reads it, and removes them after: no node needs the whole dataset on disk;
- `source_fingerprint` hashes the run's objects' sizes and modification times, as
  `runcache.source_fingerprint` hashes local files, so the run cache stays valid across
  builds without downloading anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.fs as pafs

from megdecode import files
from megdecode.data import bids, runcache
from megdecode.data.bids import RunKey

RAW = re.compile(r"^(?P<raw>.*_meg\.(?:fif|ds))(?:/.*)?$")  # a recording file, or in a .ds folder
STIMULI = "stimuli/"  # images: fetched by the latents stage, not by preprocessing


def _listing(root: str, prefix: str = "", recursive: bool = True) -> list[pafs.FileInfo]:
    """The objects under `root`/`prefix` (relative paths in `.path` are made by callers)."""
    fs, inner = files.resolve(root)
    base = f"{inner}/{prefix}".rstrip("/")
    with files.named_errors(root):
        found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
    return [i for i in found if i.type == pafs.FileType.File]


def _relative(root: str, infos: Iterable[pafs.FileInfo]) -> dict[str, pafs.FileInfo]:
    _, inner = files.resolve(root)
    return {i.path[len(inner) + 1 :]: i for i in infos}


def find_runs(root: str | Path, subjects: Iterable[str] | None = None) -> list[RunKey]:
    """`bids.find_runs` of a local or remote root (see the module docstring)."""
    if not files.is_uri(root):
        return bids.find_runs(root, subjects=subjects)
    listed = _relative(str(root), _listing(str(root)))
    if not listed:
        raise FileNotFoundError(f"BIDS root {root} does not exist (no objects under it)")
    fs, inner = files.resolve(root)
    with tempfile.TemporaryDirectory(prefix="megdecode-bids-") as tmp:
        for rel in listed:
            if rel.startswith(STIMULI):
                continue
            raw = RAW.match(rel)
            target = Path(tmp) / (raw.group("raw") if raw else rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            if raw is None:
                files.copy_to_local(fs, f"{inner}/{rel}", target)
            elif raw.group("raw").endswith(".ds"):
                target.mkdir(exist_ok=True)
            else:
                target.touch()
        return bids.find_runs(tmp, subjects=subjects)


def _run_infos(root: str, key: RunKey) -> dict[str, pafs.FileInfo]:
    """The objects one run needs: the dataset's top-level files, the session's files that
    are this run's or no run's, and the subject's sample attributes."""
    session = f"sub-{key.subject}/ses-{key.session}"
    attributes = bids.attributes_path("", key.subject).as_posix()
    infos = _listing(root, recursive=False) + _listing(root, session)
    infos += [i for i in _listing(root, "sourcedata", recursive=False)]
    picked = {}
    for rel, info in _relative(root, infos).items():
        name = rel.rsplit("/", 1)[-1]
        if rel.startswith("sourcedata/") and rel != attributes:
            continue
        if "_run-" in name and f"_run-{key.run}_" not in rel:
            continue
        picked[rel] = info
    return picked


@contextlib.contextmanager
def fetched_run(root: str | Path, key: RunKey) -> Iterator[Path]:
    """A local BIDS root holding run `key` (the root itself when it is local)."""
    if not files.is_uri(root):
        yield Path(root)
        return
    with files.local_copy(str(root), include=sorted(_run_infos(str(root), key))) as local:
        yield local


def source_fingerprint(root: str | Path, key: RunKey) -> str:
    """What `runcache.source_fingerprint` is for a local root: sizes and mtimes of the run's
    files, here read from the object listing (nothing is downloaded)."""
    if not files.is_uri(root):
        return runcache.source_fingerprint(Path(root), key)
    stats = [
        (rel, info.size, info.mtime_ns)
        for rel, info in sorted(_run_infos(str(root), key).items())
        if "_meg." in rel or rel.endswith(("_events.tsv", ".csv"))
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()
