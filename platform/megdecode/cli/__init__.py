"""The `megdecode` command: thin shells over the library, one sub-command per stage."""

from __future__ import annotations

from typing import Annotated

import typer

from megdecode.cli import data, evaluation, generation, search, serving, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="also stream Ray's, Tune's, Serve's and "
            "MLflow's own output (default: in a log file)",
        ),
    ] = False,
) -> None:
    """Set log levels once, here at the entry point, before any sub-command runs."""
    from megdecode.logs import setup_logging

    setup_logging("DEBUG" if verbose else "INFO", verbose_output=verbose)


# `megdecode --help` lists the sub-commands in the order they register here: a run's order.
app.command("simulate")(data.simulate)
app.command("preprocess")(data.preprocess)
app.command("latents")(data.latents)
app.command("demo")(serving.demo)
app.command("train")(training.train)
app.command("evaluate")(evaluation.evaluate)
app.command("tune")(search.tune)
app.command("windows")(training.windows)
app.command("serve")(serving.serve_cmd)
app.command("serve-example")(serving.serve_example)
app.command("register")(search.register)
app.command("train-generator")(generation.train_generator_cmd)
app.command("reconstruct")(generation.reconstruct)


def run(argv: list[str]) -> int:
    """`megdecode ARGV` as a function that returns its exit status (what jobs/*.py call)."""
    try:
        app(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> None:
    """The `megdecode` console script (pyproject.toml) and `python -m megdecode.cli`."""
    app()
