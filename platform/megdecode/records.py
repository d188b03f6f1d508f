"""Reports -> plain JSON-able values, for summary.json files and the CLI's printouts.

Stage reports are dataclasses that may hold tables (DataFrames), lists and other
reports; `plain` turns such a tree into dicts, lists and scalars (tables become lists of
row records). Anything else is left as it is, for ``json.dumps(default=str)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def plain(obj: Any) -> Any:
    """A dataclass / DataFrame / list / dict tree as plain dicts, lists and records."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj.to_dict(orient="records")
    if isinstance(obj, list | tuple):
        return [plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj
