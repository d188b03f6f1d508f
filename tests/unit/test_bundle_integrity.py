"""A bundle edited after saving is refused, naming the file or field: bundle.json's own fields
(its checksums per field), the file checksums (missing or emptied entries are not skipped), a
missing file or array; the checks below the checksums (`load_bundle`'s own validation) are
reached by a bundle whose checksums were rewritten; a second-format bundle loads with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.bundles import BUNDLE_CH_NAMES, tiny_bundle
from megdecode.bundle_fields import BundleError
from megdecode.bundle_integrity import FIELDS_KEY, field_digest, seal
from megdecode.bundle_io import FORMAT, FORMAT_V2, load_bundle, save_bundle
from megdecode.data.store import sha256_file

Meta = dict[str, Any]


def _edit(path: Path, change: Callable[[Meta], object], reseal: bool = False) -> None:
    """Edit bundle.json in place, by hand (``reseal=False``) or as a writer that recomputes the
    field checksums would."""
    meta = json.loads((path / "bundle.json").read_text())
    change(meta)
    (path / "bundle.json").write_text(json.dumps(seal(meta) if reseal else meta, indent=1))


def _saved(tmp_path: Path) -> Path:
    return save_bundle(tiny_bundle(), tmp_path / "b")


def _as_v2(meta: Meta) -> None:
    """bundle.json as the second format wrote it: the same fields, no checksum of its own."""
    meta["format"] = FORMAT_V2
    del meta[FIELDS_KEY]


def test_a_saved_bundle_is_sealed_and_reformatting_the_json_is_not_an_edit(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format"] == FORMAT == "megdecode-bundle/3"
    assert set(meta[FIELDS_KEY]) == set(meta) - {FIELDS_KEY}
    assert meta[FIELDS_KEY]["ch_names"] == field_digest(list(BUNDLE_CH_NAMES))
    assert meta["sha256"] == {n: sha256_file(path / n) for n in meta["sha256"]}
    (path / "bundle.json").write_text(json.dumps(meta, indent=7, sort_keys=True))
    assert load_bundle(path).ch_names == list(BUNDLE_CH_NAMES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["ch_names"].reverse(), r"'ch_names' do not match their checksum"),
        (
            lambda m: m["ch_names"].__setitem__(slice(0, 2), m["ch_names"][1::-1]),
            r"'ch_names' do not match",
        ),
        (lambda m: m.__setitem__("tmin", -0.0125), r"'tmin' do not match"),
        (lambda m: m["scalers"]["BIGMEG1"]["center"].reverse(), r"'scalers' do not match"),
        (lambda m: m.__setitem__("format", FORMAT_V2), r"'format' do not match"),
        (lambda m: m.pop("metrics"), r"missing metrics, which it was saved with"),
        (lambda m: m.__setitem__("note", "by hand"), r"'note' were added after"),
        (lambda m: m.pop(FIELDS_KEY), r"fields_sha256 is missing or empty"),
        (lambda m: m.__setitem__(FIELDS_KEY, {}), r"fields_sha256 is missing or empty"),
        (lambda m: m.__setitem__("sha256", {}), r"'sha256' do not match"),
    ],
)
def test_an_edited_bundle_json_is_refused_naming_the_field(
    tmp_path: Path, change: Callable[[Meta], object], message: str
) -> None:
    path = _saved(tmp_path)
    _edit(path, change)
    with pytest.raises(BundleError, match=message) as raised:
        load_bundle(path)
    assert str(path / "bundle.json") in str(raised.value)


@pytest.mark.parametrize("fmt", ["v3", "v2"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m.__setitem__("sha256", {}),
            "no entry for model.safetensors, arrays.safetensors",
        ),
        (lambda m: m["sha256"].pop("arrays.safetensors"), "no entry for arrays.safetensors"),
        (lambda m: m["sha256"].__setitem__("../x", "0" * 64), r"names files .*: \.\./x"),
        (lambda m: m.__setitem__("sha256", ["model.safetensors"]), "must map file names"),
        (lambda m: m.pop("sha256"), "missing sha256"),
    ],
)
def test_missing_or_emptied_file_checksums_are_refused(
    tmp_path: Path, fmt: str, change: Callable[[Meta], object], message: str
) -> None:
    """Even when bundle.json's own checksums agree (or the format has none), a file nothing
    vouches for is not read."""
    path = _saved(tmp_path)
    if fmt == "v2":
        _edit(path, lambda m: (change(m), _as_v2(m)))
    else:
        _edit(path, change, reseal=True)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


@pytest.mark.parametrize("name", ["model.safetensors", "arrays.safetensors"])
def test_a_missing_or_replaced_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    path = _saved(tmp_path)
    (path / name).write_bytes((path / name).read_bytes()[:-1] + b" ")
    with pytest.raises(BundleError, match=f"{name} does not match its checksum in bundle.json"):
        load_bundle(path)
    (path / name).unlink()
    with pytest.raises(BundleError, match=f"bundle file .*{name} is missing"):
        load_bundle(path)


def _drop_array(path: Path, name: str) -> None:
    """Rewrite arrays.safetensors without `name`, with checksums that agree (a buggy writer)."""
    arrays = load_file(str(path / "arrays.safetensors"))
    del arrays[name]
    save_file(arrays, str(path / "arrays.safetensors"))
    digest = sha256_file(path / "arrays.safetensors")
    _edit(path, lambda m: m["sha256"].__setitem__("arrays.safetensors", digest), reseal=True)


def test_a_missing_array_is_refused_naming_it(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _drop_array(path, "gallery_ids")
    with pytest.raises(BundleError, match=r"arrays.safetensors is missing gallery_ids"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["ch_names"].append("M6"), r"pos2d has shape \(6, 2\), expected \(7, 2\)"),
        (lambda m: m["ch_names"].__setitem__(1, m["ch_names"][0]), "duplicate channel names"),
        (lambda m: m.__setitem__("n_times", 14), "n_times=14 does not match window"),
        (lambda m: m.__setitem__("subjects", ["BIGMEG1"]), "n_subjects=2 but the bundle says 1"),
        (lambda m: m.__setitem__("tmax", -1.0), "window tmin=0.0 >= tmax=-1.0"),
    ],
)
def test_load_validates_a_resealed_bundle(
    tmp_path: Path, change: Callable[[Meta], object], message: str
) -> None:
    """`load_bundle` checks the fields against each other, not only their checksums."""
    path = _saved(tmp_path)
    _edit(path, change, reseal=True)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_a_second_format_bundle_loads_once_warned_and_saves_as_the_current_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tiny_bundle()
    path = save_bundle(bundle, tmp_path / "v2")
    _edit(path, _as_v2)
    with caplog.at_level(logging.WARNING, logger="megdecode.bundle_io"):
        loaded = load_bundle(path)
        load_bundle(path)
    warned = [r.getMessage() for r in caplog.records if FORMAT_V2 in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0] and "cannot be detected" in warned[0]
    assert loaded.ch_names == bundle.ch_names
    np.testing.assert_array_equal(loaded.gallery, bundle.gallery)
    again = save_bundle(loaded, tmp_path / "v3")
    assert json.loads((again / "bundle.json").read_text())["format"] == FORMAT
    _edit(again, lambda m: m["ch_names"].reverse())
    with pytest.raises(BundleError, match="'ch_names' do not match"):
        load_bundle(again)


def test_a_bundle_json_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    (path / "bundle.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="holds a list, expected an object"):
        load_bundle(path)
    (path / "bundle.json").write_text('{"format": ')
    with pytest.raises(BundleError, match="bundle.json is not valid JSON"):
        load_bundle(path)
