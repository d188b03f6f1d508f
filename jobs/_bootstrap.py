"""Make `megdecode` importable from a job's working directory.

`ray job submit --working-dir .` puts the repo root on sys.path, not `platform/`, so a
cluster where the package is not pip-installed could not import it otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "platform"


def ensure_importable() -> None:
    try:
        import megdecode  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(SOURCE_ROOT))
