"""Local weights only: one check for a missing path, one loud warning for random weights.

No machine of this project can reach a model hub, and a latent from the wrong weights is
a silent scientific error, so every encoder (and every metric network) either loads a file
that exists or, when a test or a twin demo asks for it explicitly, builds random weights
from a fixed seed and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0


def require_weights(
    path: str | Path | None, who: str, expect: str, allow_random_init: bool
) -> Path | None:
    """`path` as an existing Path, or None when random weights were explicitly allowed.

    expect: what the path should be ("a file", "a diffusers folder with config.json"), for
    the error message. Raises FileNotFoundError "no weights at PATH" when a path is given
    but absent, ValueError when none is given and random weights were not allowed.
    """
    if path is None:
        if not allow_random_init:
            raise ValueError(
                f"{who} needs weights: pass the path of {expect} on local disk; nothing is "
                "downloaded. allow_random_init=True exists for tests and twin demos only."
            )
        logger.warning(
            "%s has RANDOM weights (seed %d): its outputs are not the pretrained model's; "
            "use them for tests and demos only",
            who,
            RANDOM_INIT_SEED,
        )
        return None
    resolved = Path(path).expanduser()
    folder = expect.startswith("a folder") or expect.startswith("a diffusers folder")
    if not (resolved.is_dir() if folder else resolved.is_file()):
        raise FileNotFoundError(
            f"no weights at {resolved}: {who} loads {expect}; nothing is downloaded"
        )
    return resolved


def weights_identity(path: Path | None) -> str:
    """What a cache fingerprint records about the weights: path and size, or the seed."""
    if path is None:
        return f"random-init-seed-{RANDOM_INIT_SEED}"
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        size = path.stat().st_size
    return f"{path.resolve()}|{size}"


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state_dict from .safetensors or a torch file (weights only, on CPU).

    Unwraps the usual containers ({"state_dict": ...}, {"model": ...}) and a DataParallel
    "module." prefix, so checkpoints saved by training scripts load as well as bare ones.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Build a model inside this block: random weights (where a path is missing and random
    init is allowed, or before a checkpoint overwrites them) come from `RANDOM_INIT_SEED`, the
    same on every call and machine, and the caller's torch random state is left untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield
