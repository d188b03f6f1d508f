"""Reconstruction evaluation: decode the test set, generate on Ray, score, log."""
