"""The BrainDecoder deployment (batched brain module + gallery retrieval); see megdecode.serve.decoder."""

from megdecode.serve.decoder import BrainDecoder  # noqa: F401
