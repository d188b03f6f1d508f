"""Ray job: one training run (`train` stage). Arguments as `megdecode train --help`.

ray job submit --working-dir . -- python jobs/train.py --data /abs/run --latent handcrafted
ray job submit --working-dir . -- python jobs/train.py --from-run RUN_ID --tracking-uri URI --seed 0
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable

if __name__ == "__main__":
    ensure_importable()
    from megdecode.cli import app

    app(["train", *sys.argv[1:]])
