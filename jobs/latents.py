"""Ray job: the `latents` stage. Arguments as `megdecode latents --help`.

    ray job submit --working-dir . -- python jobs/latents.py --help
    ray job submit --working-dir . -- python jobs/latents.py --store S --bids B --out L \
        --encoder dinov2 --dinov2-weights /w/dinov2_vitl14.pth \
        --encoder autokl --autokl-weights /w/vae --encoder clip-text --clip-weights /w/clip.bin
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable

if __name__ == "__main__":
    ensure_importable()
    from megdecode.cli import app

    app(["latents", "--ray", *sys.argv[1:]])
