"""The MEG twin: a simulated THINGS-MEG-like study written as real BIDS, with its ground truth."""
