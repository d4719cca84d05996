"""The ``mlflow-safeflavor`` command: thin click commands over the library API.

Every ``SafeFlavorError``, ``MlflowException`` and ``OSError`` is turned into one line on stderr
(the problem and the fix) and exit code 1 in one place, :class:`_Group`; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mlflow_safeflavor._version import __version__


class _Group(click.Group):
    """Every command's errors end here: one line naming the problem and the fix, exit 1 (``--debug``: the traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        from mlflow.exceptions import MlflowException

        from mlflow_safeflavor.errors import SafeFlavorError

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (SafeFlavorError, MlflowException, OSError) as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {error_line(exc)}", err=True)
            sys.exit(1)


def error_line(exc: BaseException) -> str:
    """What the CLI prints for ``exc``: our own message as written, MLflow's and the OS's with the fix.

    MLflow's messages can carry a server's whole response (or a retry history) and say nothing of
    what to do, so only their first line is kept and a fix follows, chosen by MLflow's error code.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.errors import SafeFlavorError

    if isinstance(exc, SafeFlavorError):
        return exc.message
    if isinstance(exc, MlflowException):
        unreachable = connection_problem(str(exc.message))
        if unreachable:
            return (f"the MLflow tracking server did not answer ({unreachable}). Start it, or point MLFLOW_TRACKING_URI "
                    "(--tracking-uri) at one that runs.")
        text = str(exc.message).strip().splitlines()[0][:400] if str(exc.message).strip() else type(exc).__name__
        return f"MLflow: {text.rstrip('.')}. {_mlflow_fix(exc.error_code)} (--debug shows the traceback)"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc}. Check the path and its permissions."
    return f"{type(exc).__name__}: {exc}"


def connection_problem(message: str) -> str | None:
    """A short reason when an MLflow error says the server could not be reached, else None."""
    lowered = message.lower()
    for needle, reason in (("connection refused", "connection refused"), ("failed to establish", "connection refused"),
                           ("timed out", "timed out"), ("name or service not known", "unknown host"),
                           ("nodename nor servname", "unknown host"), ("max retries exceeded", "no answer after retries")):
        if needle in lowered:
            return reason
    return None


def _mlflow_fix(code: str) -> str:
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return "Check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) and the user's permissions."
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return ("Check the model URI (a local path, runs:/RUN_ID/PATH or models:/NAME/VERSION) and that MLFLOW_TRACKING_URI "
                "points at the server that holds it.")
    return ("Check the model URI (a local path, runs:/RUN_ID/PATH or models:/NAME/VERSION; models:/ needs MLFLOW_TRACKING_URI, "
            "else MLflow uses ./mlflow.db).")


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mlflow-safeflavor")
@click.option("--debug", is_flag=True, default=False, envvar="MLFLOW_SAFEFLAVOR_DEBUG",
              help="Show the full traceback of an error instead of one line (also MLFLOW_SAFEFLAVOR_DEBUG=1).")
def main(debug: bool) -> None:
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


@main.command("verify")
@click.argument("model_uri")
@click.option("--public-key", "public_keys", multiple=True, help="PEM public key; makes a valid signature mandatory (repeatable).")
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(model_uri: str, public_keys: tuple[str, ...], trusted_types: str | None, as_json: bool) -> None:
    """Verify digests, signature, trust decision and payload structure; flag pickles, code/ and foreign loaders.

    Exits 0 only if every check passes.
    """
    from mlflow_safeflavor.verify import format_result, verify_model

    result = verify_model(model_uri, public_key=list(public_keys) or None, trusted_types=trusted_types)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_result(result))
    sys.exit(0 if result.ok else 1)


@main.command("sign")
@click.argument("model_uri")
@click.option("--key", "private_key", required=True, type=click.Path(exists=True, dir_okay=False), help="Elliptic-curve private key (PEM).")
@click.option("--password", default=None, help="Password of the private key, if encrypted.")
@_trusted_option
def sign_cmd(model_uri: str, private_key: str, password: str | None, trusted_types: str | None) -> None:
    """Sign every file of a safe-flavor model directory (writes model.sig) with model-signing, offline."""
    from mlflow_safeflavor.sign import sign_model

    where = sign_model(model_uri, private_key, password=password, trusted_types=trusted_types)
    click.echo(f"signed {where}")


@main.command("serve")
@click.argument("model_uri")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes; each loads and verifies the model.")
@click.option("--timeout", default=None, type=int, help="Request timeout in seconds (MLflow's default if unset).")
@click.option("--public-key", "public_keys", multiple=True, help="PEM public key; makes a valid signature mandatory (repeatable).")
@_trusted_option
@click.option("--backend", default=None, type=click.Choice(["auto", "onnx", "native"]),
              help="Default MLFLOW_SAFEFLAVOR_BACKEND, else auto. auto: the ONNX export for batches where it is faster (derived from the verified checkpoint and "
                   "cached when the model has none); onnx: the export, or refuse to start; native: the checkpoint, bit for bit.")
def serve_cmd(model_uri: str, host: str, port: int, workers: int, timeout: int | None,
              public_keys: tuple[str, ...], trusted_types: str | None, backend: str | None) -> None:
    """Serve a model with MLflow's scoring protocol, loaded by our verifying loader (never loader_module).

    A model that fails any check makes the command exit 1 with the reason before anything listens.
    """
    from mlflow_safeflavor.serving import serve

    serve(model_uri, host=host, port=port, workers=workers, public_key=list(public_keys) or None,
          trusted_types=trusted_types, timeout=timeout, backend=backend)


@main.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", required=True, help="The alias to give the version once it passes, e.g. champion.")
@click.option("--public-key", "public_keys", multiple=True, help="PEM public key; the version must carry a valid signature by it (repeatable).")
@click.option("--signing-key", default=None, type=click.Path(exists=True, dir_okay=False), help="The gate's EC private key (PEM): sign the verified artifacts and upload model.sig.")
@click.option("--signing-password", default=None, envvar="MLFLOW_SAFEFLAVOR_SIGNING_PASSWORD", help="Password of the signing key, if encrypted.")
@_trusted_option
@click.option("--reapprove", is_flag=True, default=False,
              help="Verify and tag a version whose artifacts no longer match its safeflavor.verified tag "
                   "(evidence of tampering otherwise refused); the old digest is recorded as reapproved_from.")
def promote_cmd(name: str, version: str, alias: str, public_keys: tuple[str, ...], signing_key: str | None,
                signing_password: str | None, trusted_types: str | None, reapprove: bool) -> None:
    """Verify, smoke-test, optionally sign and tag model version NAME/VERSION, then set --alias.

    A version that fails is tagged safeflavor.rejected with the reason, gets no alias, and the
    command exits 1.
    """
    from mlflow_safeflavor.registry import promote

    result = promote(name, version, alias, public_key=list(public_keys) or None, signing_key=signing_key,
                     signing_password=signing_password, trusted_types=trusted_types, reapprove=reapprove)
    click.echo(f"promoted {result.name} version {result.version} to @{result.alias} "
               f"(safeflavor.verified={result.digest}{', signed' if result.signed else ''})")


@main.command("webhook")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--secret", required=True, envvar="MLFLOW_SAFEFLAVOR_WEBHOOK_SECRET", help="The webhook's HMAC secret (prefer the environment variable MLFLOW_SAFEFLAVOR_WEBHOOK_SECRET).")
@click.option("--tracking-uri", default=None, help="The MLflow server to tag versions on (default: MLFLOW_TRACKING_URI).")
@click.option("--public-key", "public_keys", multiple=True, help="PEM public key; versions must carry a valid signature by it (repeatable).")
@click.option("--protected-aliases", default=None, help="Comma-separated aliases to guard (default: MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES or champion,production).")
@click.option("--window", default=300, show_default=True, type=float, help="Seconds a delivery timestamp may be off; delivery ids are remembered this long.")
@_trusted_option
def webhook_cmd(host: str, port: int, secret: str, tracking_uri: str | None, public_keys: tuple[str, ...],
                protected_aliases: str | None, window: float, trusted_types: str | None) -> None:
    """Receive MLflow webhooks: verify new versions, remove protected aliases from unverified ones.

    Register it with MlflowClient().create_webhook(name, "http(s)://HOST:PORT/webhook",
    events=["model_version.created", "model_version_alias.created", "prompt_alias.created"], secret=...).
    """
    from mlflow_safeflavor.registry.webhook import serve

    serve(secret=secret, host=host, port=port, tracking_uri=tracking_uri, public_key=list(public_keys) or None,
          trusted_types=trusted_types, protected=protected_aliases, window=window)


@main.command("scan")
@click.argument("source")
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the scan as JSON.")
def scan_cmd(source: str, trusted_types: str | None, as_json: bool) -> None:
    """Statically scan a .pkl/.pickle/.joblib file (or the pickle inside an MLflow model URI).

    Lists every import it would make, allowed or refused and why; nothing is unpickled. Exits 0
    when every import is on the allowlist, 1 otherwise.
    """
    from mlflow_safeflavor.migrate import scan_source

    report = scan_source(source, trusted_types=trusted_types)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    sys.exit(0 if report.ok else 1)


@main.command("convert")
@click.argument("source", required=False)
@click.option("--output", "output", default=None, type=click.Path(file_okay=False), help="Directory to write the converted model to (must not exist).")
@click.option("--register", "register", default=None, help="Log the converted model and register it under this name.")
@click.option("--sample", "sample", default=None, help="Rows to compare predictions on (.csv, .json, .parquet, .npy file), or 'synthetic' for 64 random rows shaped like the model's input; default: the source's input example.")
@click.option("--registry", "registry_names", multiple=True, help="Convert every version of this registered model (repeatable).")
@click.option("--all", "all_models", is_flag=True, help="Convert every version of every registered model.")
@click.option("--timeout", default=None, type=float, help="Seconds one conversion may take (default MLFLOW_SAFEFLAVOR_CONVERT_TIMEOUT or 600).")
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert_cmd(source: str | None, output: str | None, register: str | None, sample: str | None,
                registry_names: tuple[str, ...], all_models: bool, timeout: float | None,
                trusted_types: str | None, as_json: bool) -> None:
    """Convert a pickled model (file or MLflow URI) into the safe flavor, proving identical predictions.

    SOURCE is a .pkl/.pickle/.joblib file or an MLflow model URI (runs:/, models:/, a path). With
    --registry NAME or --all, every version of those registered models is converted and registered
    as a new version (of --register NAME if given), with a summary table; exits 1 if any version
    was refused or failed.
    """
    from mlflow_safeflavor.errors import InvalidArgumentError

    bulk = bool(registry_names) or all_models
    if bulk == (source is not None):
        raise InvalidArgumentError("give either SOURCE or --registry NAME / --all (not both).")
    if not bulk:
        from mlflow_safeflavor.migrate import convert

        result = convert(source, dest_path=output, registered_model_name=register, sample_input=sample,
                         trusted_types=trusted_types, timeout=timeout)
        click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.format())
        return
    if output:
        raise InvalidArgumentError("--output is for one SOURCE; registry conversions register new versions.")
    _convert_registry(list(registry_names) or None, register, sample, trusted_types, as_json)


def _convert_registry(names: list[str] | None, register: str | None, sample: str | None,
                      trusted_types: str | None, as_json: bool) -> None:
    from mlflow_safeflavor.migrate.bulk import convert_registered, registered_versions
    from mlflow_safeflavor.registry.store import get_client

    total = len(registered_versions(get_client(), names))
    with click.progressbar(length=total, label="converting", file=sys.stderr,
                           item_show_func=lambda r: f"{r.name} v{r.version}: {r.status}" if r else "") as bar:
        rows = convert_registered(names, registered_model_name=register, sample_input=sample,
                                  trusted_types=trusted_types, progress=lambda r: bar.update(1, r))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        width = max([len(r.name) for r in rows] + [5])
        click.echo(f"{'MODEL':{width}}  VERSION  STATUS     NEW  DETAIL")
        for r in rows:
            click.echo(f"{r.name:{width}}  {r.version:7}  {r.status:9}  {r.new_version or '-':>3}  {r.detail}")
        counts = {s: sum(r.status == s for r in rows) for s in ("converted", "refused", "failed", "skipped")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    sys.exit(1 if any(r.status in ("refused", "failed") for r in rows) else 0)


@main.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on; anything but loopback prints a warning (the page has no login).")
@click.option("--port", default=5050, show_default=True, type=int, help="Port to listen on.")
@click.option("--tracking-uri", default=None, help="The MLflow server whose registry the page shows and changes (default: MLFLOW_TRACKING_URI).")
@click.option("--max-upload-mb", default=None, type=click.FloatRange(min=0.001), help="Cap on one upload (default MLFLOW_SAFEFLAVOR_UI_MAX_UPLOAD_MB or 256).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, help="Another Host header name to answer, e.g. the machine's DNS name (repeatable).")
@click.option("--public-key", "public_keys", multiple=True, help="PEM public key; verify and promote require a valid signature by it (repeatable).")
@click.option("--signing-key", default=None, type=click.Path(exists=True, dir_okay=False), help="The gate's EC private key (PEM): promotions sign the verified artifacts.")
@click.option("--signing-password", default=None, envvar="MLFLOW_SAFEFLAVOR_SIGNING_PASSWORD", help="Password of the signing key, if encrypted.")
@_trusted_option
def ui_cmd(host: str, port: int, tracking_uri: str | None, max_upload_mb: float | None, allowed_hosts: tuple[str, ...],
           public_keys: tuple[str, ...], signing_key: str | None, signing_password: str | None, trusted_types: str | None) -> None:
    """Start the local web page: check and convert pickles, see the registry's safety, convert and promote versions.

    Nothing uploaded is unpickled by the page; every check is the library's (scan, convert, verify, promote).
    """
    from mlflow_safeflavor.registry.core import policy_record
    from mlflow_safeflavor.ui import UIConfig, serve

    policy_record(by="promote", trusted_types=trusted_types, public_key=list(public_keys) or None,
                  signing_key=signing_key, signing_password=signing_password)  # checks keys before listening
    check_tracking_server(tracking_uri)
    config = UIConfig.from_env(
        host=host, port=port, tracking_uri=tracking_uri, public_key=list(public_keys),
        max_upload_bytes=int(max_upload_mb * 1024 * 1024) if max_upload_mb else None,
        allowed_hosts=list(allowed_hosts), signing_key=signing_key, signing_password=signing_password,
        trusted_types=trusted_types,
    )
    serve(config)


# MLflow's client retries a failed request 7 times with exponential backoff and waits 120 s for each
# answer: an unreachable server holds every page request for minutes, and Ctrl-C waits for them. The
# page's requests get these bounds unless the operator set MLflow's variables.
UI_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def check_tracking_server(tracking_uri: str | None) -> None:
    """Bound MLflow's HTTP retries for this process and fail fast when the tracking server does not answer.

    Applies :data:`UI_HTTP_LIMITS` (without overriding variables already set), then asks the server
    for one registered model. Raises InvalidArgumentError naming the server and the fix when it does
    not answer or refuses; a non-HTTP tracking URI (a database, a directory) is not probed.
    """
    import os

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.errors import InvalidArgumentError

    uri = tracking_uri or mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    for name, value in UI_HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    try:
        MlflowClient(tracking_uri=uri).search_registered_models(max_results=1)
    except MlflowException as exc:
        from mlflow_safeflavor.ui.app import shown_uri

        problem = connection_problem(str(exc.message))
        detail = f"did not answer ({problem})" if problem else f"answered {exc.error_code}: {' '.join(str(exc.message).split())[:200]}"
        raise InvalidArgumentError(
            f"the tracking server {shown_uri(uri)} {detail}. Start it, or pass --tracking-uri (or MLFLOW_TRACKING_URI) "
            "naming a server this machine can reach and use."
        ) from None


@main.command("demo")
@click.option("--dir", "directory", default="demo-mlruns", show_default=True, help="Where the local MLflow store goes.")
def demo_cmd(directory: str) -> None:
    """Train one small model per library, log and register them locally, load them back, and show a tampered copy refused."""
    from mlflow_safeflavor.demo import run_demo

    run_demo(directory)


if __name__ == "__main__":  # pragma: no cover
    main()
