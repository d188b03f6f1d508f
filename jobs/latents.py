"""Ray job: the `latents` stage. Arguments as `megdecode latents --help`.

    ray job submit --working-dir . -- python jobs/latents.py --help
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable

if __name__ == "__main__":
    ensure_importable()
    from megdecode.cli import app

    app(["latents", "--ray", *sys.argv[1:]])
