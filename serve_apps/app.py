"""Ray Serve entry point: ``serve run serve_apps/config.yaml`` (or ``serve deploy``).

The YAML's ``import_path: serve_apps.app:app`` names the builder below; its ``args`` are
`megdecode.serve.config.ServeConfig` overrides. The graph (Ingress -> BrainDecoder,
Generator) lives in `megdecode.serve.app`.
"""

from megdecode.serve.app import app_builder, build_app  # noqa: F401  (build_app: for scripts)

app = app_builder
