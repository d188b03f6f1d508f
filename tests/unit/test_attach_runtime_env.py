"""What a driver attaching to a cluster ships to its workers (`raycluster.attach_runtime_env`)."""

from __future__ import annotations

import json

import pytest

from megdecode.raycluster import attach_runtime_env, job_runtime_env

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


def test_what_the_job_already_sets_is_left_to_the_job() -> None:
    """Ray refuses a driver runtime_env that repeats a field or a variable of its job's."""
    job = {"working_dir": "gcs://pkg.zip", "env_vars": {"AWS_ENDPOINT_URL": "http://s3:9000"}}
    env = attach_runtime_env(None, "/src/megdecode", S3, job)
    assert env == {"py_modules": ["/src/megdecode"], "env_vars": {"AWS_ACCESS_KEY_ID": "k"}}
    job = {"py_modules": ["gcs://other.zip"], "env_vars": S3}
    assert attach_runtime_env(None, "/src/megdecode", S3, job) == {}


def test_the_job_runtime_env_is_read_from_rays_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert job_runtime_env() == {}
    config = {"runtime_env": {"env_vars": {"A": "1"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    assert job_runtime_env() == {"env_vars": {"A": "1"}}
