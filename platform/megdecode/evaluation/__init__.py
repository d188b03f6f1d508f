"""Evaluation: retrieval metrics, the ridge baseline and decoding over time windows."""
