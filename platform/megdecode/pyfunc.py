"""A bundle as an MLflow pyfunc model: what `model_registry.register_bundle` logs and registers.

The registry stores a model any MLflow tool can load (``mlflow.pyfunc.load_model``,
``mlflow models serve``) with a signature naming its tensors; the bundle travels inside
it as an artifact, so megdecode's own stages read the bundle itself.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import Schema, TensorSpec

from megdecode.bundle import ModelBundle
from megdecode.predict import load_model, predict_windows

logger = logging.getLogger(__name__)

# The model is logged "from code" (this file, copied into the model) rather than pickled,
# so loading it runs no unpickled code, only an import of megdecode.
MODEL_CODE = """import mlflow
from megdecode.pyfunc import BundleModel

mlflow.models.set_model(BundleModel())
"""


def bundle_signature(bundle: ModelBundle) -> ModelSignature:
    """Inputs meg (-1, C, T) float32 and subject (-1,) int64; outputs clip, mse (-1, F) float32."""
    c, t, f = len(bundle.ch_names), bundle.n_times, len(bundle.latent_mean)
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, c, t), "meg"),
                TensorSpec(np.dtype(np.int64), (-1,), "subject"),
            ]
        ),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, f), "clip"),
                TensorSpec(np.dtype(np.float32), (-1, f), "mse"),
            ]
        ),
    )


class BundleModel(PythonModel):
    """The registered pyfunc: loads the bundle through `megdecode.predict.load_model`."""

    # `predict` has no type hints on purpose: MLflow would derive a schema from them, and
    # hints cannot express named tensors, which the explicit `bundle_signature` does. This
    # flag (what MLflow's own ChatModel uses) stops MLflow warning about the missing hints
    # at class creation; if MLflow drops it, the only effect is that warning.
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.bundle = load_model(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input, params=None):
        """model_input {"meg": (N, C, T) float32, "subject": (N,) int} -> {"clip", "mse": (N, F)}."""
        clip, mse = predict_windows(
            self.model,
            np.asarray(model_input["meg"], np.float32),
            np.asarray(model_input["subject"], np.int64),
        )
        return {"clip": clip, "mse": mse}


def save_pyfunc(bundle_dir: str | Path, bundle: ModelBundle, dst: Path) -> Path:
    """Write the pyfunc model of `bundle` (loaded from `bundle_dir`) to the new folder `dst`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(input example|type hint).*")
        code = dst.parent / "megdecode_pyfunc.py"
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            dst,
            python_model=str(code),
            artifacts={"bundle": str(bundle_dir)},
            signature=bundle_signature(bundle),
            pip_requirements=_requirements(),
            metadata={"latent_name": bundle.latent_name, "tmin": bundle.tmin, "tmax": bundle.tmax},
        )
    return dst


def _requirements() -> list[str]:
    """Pinned to what wrote the model, so a loader knows what it needs."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "numpy", "safetensors")]
