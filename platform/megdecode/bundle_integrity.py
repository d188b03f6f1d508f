"""Checksums that make a model bundle refuse edits: of its tensor files and of bundle.json itself.

A bundle is a folder: ``bundle.json`` lists the sha256 of ``model.safetensors`` and
``arrays.safetensors``, and (from format ``megdecode-bundle/3``) ``fields_sha256``, the
sha256 of every other field of bundle.json, each written as canonical JSON (sorted keys,
no spaces). Why per field and not one digest of the file's bytes: a refusal can then name
the field that was edited (a reordered ``ch_names`` decodes garbage without any other
error), and re-indenting the file is not an edit. Why inside bundle.json and not a file
next to it: the folder is copied as a whole by MLflow and by hand, and one file cannot be
left behind.

What this detects: corruption and edits made after saving (by hand or by a tool that does
not go through `megdecode.bundle_io.save_bundle`). What it does not: a deliberate forgery
that recomputes the checksums; that needs a signing key, which the project has no place to
keep.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from megdecode.bundle_fields import BundleError
from megdecode.data.store import sha256_file

FILES = ("model.safetensors", "arrays.safetensors")  # every bundle has both, listed in "sha256"
FIELDS_KEY = "fields_sha256"


def field_digest(value: Any) -> str:
    """sha256 of a JSON value written canonically (sorted keys, no spaces, exact float repr)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with ``fields_sha256`` set to the digest of each of its other fields.

    ``meta`` must hold JSON values only (what ``json.loads`` returns): the digests are
    recomputed on the parsed file at load, and a tuple or numpy scalar would write differently.
    """
    fields = {k: v for k, v in meta.items() if k != FIELDS_KEY}
    return fields | {FIELDS_KEY: {k: field_digest(v) for k, v in fields.items()}}


def check_fields(meta: dict[str, Any], meta_path: Path) -> None:
    """Raise `BundleError` naming each field of bundle.json added, removed or edited after saving."""
    digests = meta.get(FIELDS_KEY)
    if not isinstance(digests, dict) or not digests:
        raise BundleError(
            f"{meta_path}: {FIELDS_KEY} is missing or empty, so edits to bundle.json cannot be "
            "detected; save the bundle again with megdecode.bundle_io.save_bundle"
        )
    fields = set(meta) - {FIELDS_KEY}
    gone = sorted(set(digests) - fields)
    if gone:
        raise BundleError(
            f"{meta_path} is missing {', '.join(gone)}, which it was saved with ({FIELDS_KEY})"
        )
    added = sorted(fields - set(digests))
    if added:
        raise BundleError(
            f"{meta_path}: field(s) {', '.join(map(repr, added))} were added after the bundle "
            f"was saved (not in {FIELDS_KEY})"
        )
    edited = sorted(k for k in fields if field_digest(meta[k]) != digests[k])
    if edited:
        raise BundleError(
            f"{meta_path}: field(s) {', '.join(map(repr, edited))} do not match their checksum in "
            f"{FIELDS_KEY}: bundle.json was edited after saving"
        )


def check_files(meta: dict[str, Any], folder: Path, meta_path: Path) -> None:
    """Raise `BundleError` unless ``sha256`` lists exactly the bundle's files and each matches.

    A missing or emptied entry is refused, not skipped: it would load a file nothing vouches for.
    """
    listed = meta.get("sha256")
    if not isinstance(listed, dict):
        raise BundleError(
            f"{meta_path}: field 'sha256' must map file names to digests, got {listed!r}"
        )
    unlisted = [name for name in FILES if name not in listed]
    if unlisted:
        raise BundleError(
            f"{meta_path}: field 'sha256' has no entry for {', '.join(unlisted)}, so "
            f"{'that file' if len(unlisted) == 1 else 'those files'} cannot be verified"
        )
    unknown = sorted(set(listed) - set(FILES))
    if unknown:
        raise BundleError(
            f"{meta_path}: field 'sha256' names files a bundle does not have: {', '.join(unknown)}"
        )
    for name in FILES:
        file = folder / name
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing")
        if sha256_file(file) != listed[name]:
            raise BundleError(
                f"bundle file {file} does not match its checksum in {meta_path.name} "
                "(corrupt, or replaced after saving)"
            )
