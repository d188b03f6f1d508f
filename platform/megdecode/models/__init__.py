"""Models: the brain module and the ridge baseline."""
