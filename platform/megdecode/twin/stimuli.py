"""Procedural stimuli for the MEG twin: categories, per-image factors and PNG pixels.

Each superordinate group owns a shape family (stars, polygons, blobs, ...); each category
in it fixes the family's shape parameters, a surface texture, a typical hue and a semantic
embedding (its group's centroid plus category noise, so semantic similarity is
structured like THINGS' high-level categories). Each image then varies in low-level
factors (hue around the category's, saturation, luminance, background, position, size,
orientation, texture contrast), so that image encoders see real pixels, low-level
features are partly category-predictive (bananas are yellow) and the simulator knows
the truth. Everything is drawn from generators seeded by the caller: deterministic.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from megdecode.data.distractors import distractor_id
from megdecode.logs import progress

logger = logging.getLogger(__name__)

FAMILIES = ("star", "poly", "blob", "cross", "ring", "moon", "flower", "bar")
TEXTURES = ("plain", "stripes", "checker", "dots", "rings")
LOW_LEVEL = (
    "hue_cos",
    "hue_sin",
    "saturation",
    "luminance",
    "background",
    "pos_x",
    "pos_y",
    "size",
    "ori_cos",
    "ori_sin",
    "contrast",
)
DISTRACTOR = "distractor"  # trial_type of never-shown images (no trial ever shows one)
SUPERSAMPLE = 2  # render at 2x and box-downsample: anti-aliased edges without PIL drawing
CATCH_CATEGORY = "catch"


def make_categories(
    n_categories: int,
    n_groups: int,
    semantic_dim: int,
    semantic_within_sd: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per category: category_nr (1-based), category ("star003"), group, family,
    shape params p0..p2, texture, texture_freq, hue, sem_0..sem_{D-1}."""
    if not 1 <= n_groups <= len(FAMILIES):
        raise ValueError(f"n_groups must be in 1..{len(FAMILIES)}, got {n_groups}")
    if n_categories < n_groups:
        raise ValueError(f"n_categories ({n_categories}) < n_groups ({n_groups})")
    centroids = rng.standard_normal((n_groups, semantic_dim))
    groups = np.arange(n_categories) % n_groups
    rows = []
    for nr, g in enumerate(groups, start=1):
        emb = centroids[g] + semantic_within_sd * rng.standard_normal(semantic_dim)
        rows.append(
            {
                "category_nr": nr,
                "category": f"{FAMILIES[g]}{(nr - 1) // n_groups:03d}",
                "group": int(g),
                "family": FAMILIES[g],
                "p0": rng.uniform(),
                "p1": rng.uniform(),
                "p2": rng.uniform(),
                "texture": TEXTURES[rng.integers(len(TEXTURES))],
                "texture_freq": rng.uniform(2.0, 6.0),
                "hue": rng.uniform(),
                **{f"sem_{d}": float(emb[d]) for d in range(semantic_dim)},
            }
        )
    return pd.DataFrame(rows)


def _image_row(rng: np.random.Generator, hue: float, hue_sd: float) -> dict:
    return {
        "hue": (hue + hue_sd * rng.standard_normal()) % 1.0,
        "saturation": rng.uniform(0.35, 0.95),
        "luminance": rng.uniform(0.45, 1.0),
        "background": rng.uniform(0.15, 0.55),
        "pos_x": rng.uniform(-0.25, 0.25),
        "pos_y": rng.uniform(-0.25, 0.25),
        "size": rng.uniform(0.35, 0.65),
        "orientation": rng.uniform(0, 2 * np.pi),
        "contrast": rng.uniform(0.2, 1.0),
        "noise_seed": int(rng.integers(2**31)),
    }


def make_image_table(
    categories: pd.DataFrame,
    n_exp_per_category: int,
    test_category_nrs: np.ndarray,
    n_catch_images: int,
    hue_sd: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """All images: exp (every category), test (one per test category), catch (no object).

    Columns: image_id (THINGS-like image nr, 1-based; -1 for catch), trial_type,
    category, category_nr (0 for catch), image_nr (exemplar number within category),
    image_path (relative to the stimuli root), the low-level factors and noise_seed.
    """
    rows = []
    for cat in categories.itertuples(index=False):
        kinds = ["exp"] * n_exp_per_category + (
            ["test"] if cat.category_nr in test_category_nrs else []
        )
        for k, kind in enumerate(kinds, start=1):
            folder = "images_meg" if kind == "exp" else "images_test_meg"
            suffix = "bs"[int(rng.integers(2))]
            rows.append(
                {
                    "trial_type": kind,
                    "category": cat.category,
                    "category_nr": cat.category_nr,
                    "image_nr": k,
                    "image_path": f"{folder}/{cat.category}/{cat.category}_{k:02d}{suffix}.png",
                    **_image_row(rng, cat.hue, hue_sd),
                }
            )
    table = pd.DataFrame(rows)
    table.insert(0, "image_id", np.arange(1, len(table) + 1))
    catch = []
    for k in range(1, n_catch_images + 1):
        row = _image_row(rng, rng.uniform(), 0.0)
        row.update(pos_x=0.0, pos_y=0.0, size=0.0, orientation=0.0)
        catch.append(
            {
                "image_id": -1,
                "trial_type": "catch",
                "category": CATCH_CATEGORY,
                "category_nr": 0,
                "image_nr": k,
                "image_path": f"images_catch_meg/{CATCH_CATEGORY}/{CATCH_CATEGORY}_{k:02d}s.png",
                **row,
            }
        )
    return pd.concat([table, pd.DataFrame(catch)], ignore_index=True)


def make_distractor_table(
    categories: pd.DataFrame, n_distractors: int, hue_sd: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Never-shown images: exemplars of random categories, drawn like exp images.

    Like the paper's 3,659 extra THINGS images, they belong to the study's categories
    (test categories included) but no trial shows them. Columns: those of
    `make_image_table` (trial_type `DISTRACTOR`, image_id from
    `megdecode.data.distractors.distractor_id`, so ids never collide with shown ones).
    """
    picks = rng.integers(len(categories), size=n_distractors)
    rows = []
    for k, pick in enumerate(picks, start=1):
        cat = categories.iloc[int(pick)]
        path = f"images_distractors/{cat['category']}/{cat['category']}_d{k:05d}.png"
        rows.append(
            {
                "image_id": distractor_id(path),
                "trial_type": DISTRACTOR,
                "category": cat["category"],
                "category_nr": int(cat["category_nr"]),
                "image_nr": k,
                "image_path": path,
                **_image_row(rng, float(cat["hue"]), hue_sd),
            }
        )
    columns = ["image_id", "trial_type", "category", "category_nr", "image_nr", "image_path"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def low_level_features(images: pd.DataFrame) -> np.ndarray:
    """(N, len(LOW_LEVEL)) features on fixed scales (about zero-mean, unit-variance for the
    sampling ranges above), independent of which images are in the table."""
    ang = 2 * np.pi * images["hue"].to_numpy()
    ori = images["orientation"].to_numpy()

    def unif(col: str, lo: float, hi: float) -> np.ndarray:  # U(lo, hi) -> mean 0, sd 1
        return (images[col].to_numpy() - (lo + hi) / 2) / ((hi - lo) / np.sqrt(12))

    feats = np.c_[
        np.cos(ang) * np.sqrt(2),
        np.sin(ang) * np.sqrt(2),
        unif("saturation", 0.35, 0.95),
        unif("luminance", 0.45, 1.0),
        unif("background", 0.15, 0.55),
        unif("pos_x", -0.25, 0.25),
        unif("pos_y", -0.25, 0.25),
        unif("size", 0.35, 0.65),
        np.cos(ori) * np.sqrt(2),
        np.sin(ori) * np.sqrt(2),
        unif("contrast", 0.2, 1.0),
    ]
    catch = (images["trial_type"] == "catch").to_numpy()
    feats[np.ix_(catch, [5, 6, 7, 8, 9])] = 0.0  # no object: no position, size, orientation
    return feats.astype(np.float64)


def _shape_mask(
    family: str, p: tuple[float, float, float], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Boolean mask of a unit-radius shape in local coordinates (x, y); p in [0, 1]^3."""
    rho, th = np.hypot(x, y), np.arctan2(y, x)
    if family == "star":
        n, inner = 4 + int(p[0] * 5), 0.3 + 0.4 * p[1]
        tri = np.abs(((th * n / (2 * np.pi)) % 1.0) * 2 - 1)  # 1 at tips, 0 between
        return rho <= inner + (1 - inner) * tri
    if family == "poly":
        n = 3 + int(p[0] * 5)
        sector = (th % (2 * np.pi / n)) - np.pi / n
        return rho <= np.cos(np.pi / n) / np.cos(sector) * (0.85 + 0.15 * p[1])
    if family == "blob":
        r = (
            1
            + 0.25 * p[0] * np.cos(2 * th + 6 * p[2])
            + 0.2 * p[1] * np.cos(3 * th)
            + 0.1 * np.cos(5 * th + 3 * p[2])
        )
        return rho <= r / (1.55 - 0.1 * p[0])
    if family == "cross":
        n, half = 2 + int(p[0] * 4), 0.12 + 0.2 * p[1]
        arms = np.zeros_like(rho, dtype=bool)
        for k in range(n):
            a = np.pi * k / n
            along, across = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
            arms |= (np.abs(along) <= 1) & (np.abs(across) <= half)
        return arms
    if family == "ring":
        inner, gap = 0.35 + 0.35 * p[0], np.pi * 0.5 * p[1]
        return (rho <= 1) & (rho >= inner) & (np.abs(th) >= gap / 2)
    if family == "moon":
        off, r2 = 0.25 + 0.4 * p[0], 0.6 + 0.35 * p[1]
        return (rho <= 1) & (np.hypot(x - off, y) > r2)
    if family == "flower":
        n, depth = 3 + int(p[0] * 6), 0.25 + 0.45 * p[1]
        return rho <= 1 - depth * np.abs(np.sin(n * th / 2))
    if family == "bar":
        aspect, corner = 0.25 + 0.5 * p[0], 0.05 + 0.3 * p[1]
        dx, dy = (
            np.maximum(np.abs(x) - (1 - corner), 0),
            np.maximum(np.abs(y) - (aspect - corner), 0),
        )
        return (np.abs(x) <= 1) & (np.abs(y) <= aspect) & (np.hypot(dx, dy) <= corner)
    raise ValueError(f"unknown shape family {family!r}")


def _texture(kind: str, freq: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Texture in [0, 1] on local coordinates; 1 = primary colour, 0 = secondary."""
    if kind == "plain":
        return np.ones_like(x)
    if kind == "stripes":
        return (np.sin(np.pi * freq * x) > 0).astype(float)
    if kind == "checker":
        return ((np.floor(freq * x) + np.floor(freq * y)) % 2).astype(float)
    if kind == "dots":
        fx, fy = (freq * x) % 1 - 0.5, (freq * y) % 1 - 0.5
        return (np.hypot(fx, fy) > 0.3).astype(float)
    if kind == "rings":
        return (np.sin(np.pi * freq * np.hypot(x, y)) > 0).astype(float)
    raise ValueError(f"unknown texture {kind!r}")


def render(image: pd.Series, category: pd.Series | None, size: int) -> np.ndarray:
    """(size, size, 3) uint8 pixels of one image row (`category` None for catch images)."""
    n = size * SUPERSAMPLE
    coords = ((np.arange(n) + 0.5) / n * 2 - 1).astype(np.float32)
    x, y = np.meshgrid(coords, -coords)  # y up
    noise_rng = np.random.default_rng(int(image["noise_seed"]))
    colour = np.array(colorsys.hsv_to_rgb(image["hue"], image["saturation"], image["luminance"]))
    second = colour * (1 - 0.7 * image["contrast"])
    if category is None:  # catch: smooth coloured noise, no object
        coarse = noise_rng.standard_normal((6, 6))
        field = np.kron(coarse, np.ones((n // 6 + 1, n // 6 + 1)))[:n, :n]
        cover, primary = 1 / (1 + np.exp(-2 * field)), 1 / (1 + np.exp(-2 * field))
    else:
        c, s = np.cos(image["orientation"]), np.sin(image["orientation"])
        dx, dy = (x - image["pos_x"]) / image["size"], (y - image["pos_y"]) / image["size"]
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        p = (category["p0"], category["p1"], category["p2"])
        cover = _shape_mask(category["family"], p, lx, ly).astype(np.float32)
        primary = cover * _texture(category["texture"], category["texture_freq"], lx, ly)

    def down(a: np.ndarray) -> np.ndarray:  # box-filter the supersampled field: anti-aliasing
        return a.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3))[..., None]

    cover, primary = down(cover), down(primary)
    pixels = (1 - cover) * image["background"] + primary * colour + (cover - primary) * second
    pixels = pixels + 0.03 * noise_rng.standard_normal(pixels.shape)
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def write_images(
    images: pd.DataFrame, categories: pd.DataFrame, root: Path | str, size: int
) -> int:
    """Render every row of `images` to root/<image_path> as PNG; returns bytes written."""
    root = Path(root)
    by_name = categories.set_index("category")
    total = 0
    for _, row in progress(images.iterrows(), "stimuli", total=len(images)):
        cat = None if row["trial_type"] == "catch" else by_name.loc[row["category"]]
        path = root / row["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(row, cat, size)).save(path, compress_level=1)
        total += path.stat().st_size
    logger.info("wrote %d stimulus images (%.1f MB) under %s", len(images), total / 1e6, root)
    return total
