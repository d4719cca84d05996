"""The ``mlflow-safeflavor`` command: thin click commands over the library API.

Every ``SafeFlavorError`` is turned into one message on stderr and exit code 1 in one place.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mlflow_safeflavor._version import __version__


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from mlflow_safeflavor.errors import SafeFlavorError

        try:
            return super().invoke(ctx)
        except SafeFlavorError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mlflow-safeflavor")
def main() -> None:
    """Log, inspect and load MLflow models without pickle."""


_trusted_option = click.option(
    "--trusted-types",
    default=None,
    help="Comma-separated type names this loading side also allows (adds to MLFLOW_SAFEFLAVOR_TRUSTED_TYPES).",
)


@main.command("inspect")
@click.argument("model_uri")
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(model_uri: str, trusted_types: str | None, as_json: bool) -> None:
    """Show a model's flavor, codec, file digests, trust list and what the local policy decides.

    Exits 0 when this process would load the model, 1 when it would refuse it.
    """
    from mlflow_safeflavor.report import format_inspection, inspect_model

    report = inspect_model(model_uri, trusted_types=trusted_types)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_inspection(report))
    sys.exit(0 if report.would_load else 1)


@main.command("demo")
@click.option("--dir", "directory", default="demo-mlruns", show_default=True, help="Where the local MLflow store goes.")
def demo_cmd(directory: str) -> None:
    """Train one small model per library, log and register them locally, load them back, and show a tampered copy refused."""
    from mlflow_safeflavor.demo import run_demo

    run_demo(directory)


if __name__ == "__main__":  # pragma: no cover
    main()
