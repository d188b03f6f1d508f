"""Serving the brain module and the generator on Ray Serve (DESIGN §1, §6).

Library side of ``serve_apps/``: configs, request validation, error bodies, the gallery,
the online (streaming) preprocessing and the deployments themselves. Nothing here starts
Ray or Serve at import time.
"""
