"""What a driver attaching to a cluster ships to its workers (`raycluster.attach_runtime_env`)."""

from __future__ import annotations

from megdecode.raycluster import attach_runtime_env

S3 = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5555", "AWS_ACCESS_KEY_ID": "k"}


def test_the_package_and_the_storage_variables_are_shipped() -> None:
    env = attach_runtime_env(None, "/src/megdecode", S3)
    assert env == {"py_modules": ["/src/megdecode"], "env_vars": S3}


def test_no_storage_variables_no_env_vars() -> None:
    assert attach_runtime_env(None, "/src/megdecode", {}) == {"py_modules": ["/src/megdecode"]}


def test_the_callers_runtime_env_wins_and_is_not_mutated() -> None:
    given = {
        "py_modules": ["/other"],
        "env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000", "X": "1"},
        "pip": ["tqdm"],
    }
    env = attach_runtime_env(given, "/src/megdecode", S3)
    assert env == {
        "py_modules": ["/other"],
        "env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "k", "X": "1"},
        "pip": ["tqdm"],
    }
    assert given["env_vars"] == {"AWS_ENDPOINT_URL": "http://minio:9000", "X": "1"}
