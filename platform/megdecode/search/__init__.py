"""The research loop: search spaces, the Tune driver, trials, MLflow logging, reports."""
