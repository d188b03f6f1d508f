"""Generation: latent-conditioned image generators, post-processing and image metrics."""
