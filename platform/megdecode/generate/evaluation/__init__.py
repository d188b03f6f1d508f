"""Reconstruction evaluation: decode the test set, generate on Ray, score, log.

`run` orchestrates (`evaluate_generation`, `run_and_log`); `config`, `decode`,
`ray_generate`, `scores` and `report` each do one step. Callers import from here.
"""

from megdecode.generate.evaluation.config import (
    DECODED,
    KINDS,
    LARGE_KIND,
    NOT_SCALED,
    PRED_STATS,
    GenEvalConfig,
    generator_defaults,
    generator_meta,
)
from megdecode.generate.evaluation.decode import (
    EvalInputs,
    decode_test_set,
    predict_split,
    prediction_scaling,
)
from megdecode.generate.evaluation.ray_generate import generate_kinds, generate_on_ray
from megdecode.generate.evaluation.report import (
    fidelity_table,
    format_markdown,
    log_evaluation,
    write_fidelity,
    write_grid,
    write_results,
)
from megdecode.generate.evaluation.run import evaluate_generation, run_and_log
from megdecode.generate.evaluation.scores import (
    image_paths,
    metric_nets,
    per_image_scores,
    score_kinds,
    seen_images,
)

__all__ = [
    "DECODED",
    "KINDS",
    "LARGE_KIND",
    "NOT_SCALED",
    "PRED_STATS",
    "EvalInputs",
    "GenEvalConfig",
    "decode_test_set",
    "evaluate_generation",
    "fidelity_table",
    "format_markdown",
    "generate_kinds",
    "generate_on_ray",
    "generator_defaults",
    "generator_meta",
    "image_paths",
    "log_evaluation",
    "metric_nets",
    "per_image_scores",
    "prediction_scaling",
    "predict_split",
    "run_and_log",
    "score_kinds",
    "seen_images",
    "write_fidelity",
    "write_grid",
    "write_results",
]
