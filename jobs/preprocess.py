"""Ray job: the `preprocess` stage. Arguments as `megdecode preprocess --help`.

ray job submit --working-dir . -- python jobs/preprocess.py --help
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable

if __name__ == "__main__":
    ensure_importable()
    from megdecode.cli import app

    app(["preprocess", *sys.argv[1:]])
