"""Image latents: frozen image models that map stimuli to target vectors, with caching."""
