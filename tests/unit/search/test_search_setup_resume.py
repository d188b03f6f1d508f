"""Which search a `--resume` finds: search.json in the driver's --out, or next to Tune's
state on the storage (a real S3 server, moto's on 127.0.0.1), and the error when neither
holds one. No Ray: `SearchSetup.resumed` runs before Ray starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fixtures.s3 import S3Server
from megdecode import files
from megdecode.search.setup import SETUP_FILE, NothingToResumeError, SearchSetup


def _setup(out: Path, storage: str | None, **fields: Any) -> SearchSetup:
    return SearchSetup(
        space="space.yaml",
        data="run",
        out=str(out),
        experiment="exp",
        tracking_uri="sqlite:///mlflow.db",
        storage=storage,
        **fields,
    )


def test_a_driver_with_a_new_out_resumes_from_the_storage(
    s3_server: S3Server, tmp_path: Path
) -> None:
    storage = s3_server.uri("setup/tune")
    _setup(tmp_path / "first", storage, seeds=3, max_failures=1).save()
    assert files.exists(files.join(storage, "exp", SETUP_FILE))

    command = _setup(tmp_path / "second", storage, object_store_budget_bytes=1000)
    resumed = command.resumed()
    assert (resumed.seeds, resumed.max_failures) == (3, 1)  # the search is the saved one
    assert resumed.path == tmp_path / "second" / "exp"  # this driver's report folder
    assert resumed.tune_path == files.join(storage, "exp")
    assert resumed.object_store_budget_bytes == 1000  # cluster settings: this command's


def test_a_storage_given_on_resume_is_where_tune_state_is_looked_for(
    s3_server: S3Server, tmp_path: Path
) -> None:
    _setup(tmp_path, s3_server.uri("setup/old")).save()
    moved = s3_server.uri("setup/moved")
    assert _setup(tmp_path, moved).resumed().tune_path == files.join(moved, "exp")
    assert _setup(tmp_path, None).resumed().storage == s3_server.uri("setup/old")


def test_nothing_to_resume_names_the_folder_and_the_storage_uri(
    s3_server: S3Server, tmp_path: Path
) -> None:
    empty = s3_server.uri("setup/empty")
    with pytest.raises(NothingToResumeError, match="nothing to resume") as error:
        _setup(tmp_path, empty).resumed()
    assert str(tmp_path / "exp") in str(error.value)
    assert files.join(empty, "exp") in str(error.value)
