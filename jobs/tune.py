"""Ray job: the search (`tune` stage). Arguments as `megdecode tune --help`.

ray job submit --working-dir . -- python jobs/tune.py --space search_spaces/smoke.yaml --data /abs/run
python jobs/tune.py --space search_spaces/smoke.yaml       # no cluster: starts a local Ray

With --epochs auto (default) a search whose epochs exceed the object store budget streams
them from the store in each trial (--epochs shared refuses it; --stream-buffer-rows).

On several nodes local paths are refused unless they are a shared mount (NFS) at the same
path on every node: add --assume-shared-fs (README, "On several nodes").
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable

if __name__ == "__main__":
    ensure_importable()
    from megdecode.cli import app

    app(["tune", *sys.argv[1:]])
