"""The Generator deployment (fractional-GPU diffusion pool); see megdecode.serve.generator."""

from megdecode.serve.generator import Generator  # noqa: F401
