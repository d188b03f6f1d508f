"""Training targets made of one latent or several: ``"autokl-avg+clip-text"``.

Generation conditions on several latents at once (DESIGN §4: CLIP-Vision, CLIP-Text and
AutoKL), so one brain module can be trained on several targets: the target is the
concatenation of the named latents, feature blocks in the order of the name. The
module's MSE head then ends in one linear map whose output rows split into one block per
latent, i.e. one linear head per latent on a shared hidden layer, and the CLIP loss sees
the whole concatenation. `split_target` cuts predictions back into the named latents
(what a generator conditioned on ``{name: (N, F_name)}`` takes). The MSE loss weighs every
feature alike, so a wide latent weighs more than a narrow one; the MSE-head
post-processing (z-score, then the training latents' per-feature mean/std) puts every
block back on its own scale.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from megdecode import files
from megdecode.latents.cache import load_latents

logger = logging.getLogger(__name__)

SEP = "+"


def target_names(target: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; refuses empty and repeated names."""
    names = [n.strip() for n in str(target).split(SEP)]
    if not all(names):
        raise ValueError(f"target {target!r}: empty latent name (names are joined by {SEP!r})")
    if len(set(names)) != len(names):
        raise ValueError(f"target {target!r} names a latent twice")
    return names


def load_target(
    latents_dir: str | Path, target: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(ids (L,), latents (L, sum F), parts [(name, F), ...]) for the images every part has.

    One name reads ``<latents_dir>/<name>.parquet`` as it is. Several keep the images
    present in all parts (sorted ids), and log how many were dropped.
    """
    names = target_names(target)
    loaded = []
    for name in names:
        path = files.join(latents_dir, f"{name}.parquet")
        if not files.exists(path):
            raise FileNotFoundError(
                f"no latents {name!r} at {path}; run `megdecode latents --encoder {name}` first"
            )
        loaded.append(load_latents(path))
    if len(loaded) == 1:
        ids, values = loaded[0]
        return ids, values, [(names[0], values.shape[1])]
    common = loaded[0][0]
    for ids, _ in loaded[1:]:
        common = np.intersect1d(common, ids)
    if not len(common):
        raise ValueError(f"target {target!r}: the latents share no image")
    blocks = []
    for name, (ids, values) in zip(names, loaded, strict=True):
        if len(ids) > len(common):
            logger.warning(
                "target %s: %d images of %s lack another part and are left out",
                target,
                len(ids) - len(common),
                name,
            )
        order = np.argsort(ids)
        blocks.append(values[order[np.searchsorted(ids, common, sorter=order)]])
    return (
        common,
        np.concatenate(blocks, axis=1).astype(np.float32),
        [(n, b.shape[1]) for n, b in zip(names, blocks, strict=True)],
    )


def split_target(z: np.ndarray, parts: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    """(N, sum F) -> {name: (N, F_name)}, the inverse of the concatenation in `load_target`."""
    widths = [int(w) for _, w in parts]
    if z.shape[-1] != sum(widths):
        raise ValueError(f"got {z.shape[-1]} features, the target parts {parts} have {sum(widths)}")
    bounds = np.cumsum([0, *widths])
    return {name: z[..., bounds[i] : bounds[i + 1]] for i, (name, _) in enumerate(parts)}
