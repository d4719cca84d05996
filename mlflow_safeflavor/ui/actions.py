"""What the page's buttons do: each is one library call (scan, convert, verify, promote) plus packaging.

No check is implemented here. A pickle is judged by :func:`~mlflow_safeflavor.migrate.scan_pickle`
and converted by :func:`~mlflow_safeflavor.migrate.convert` (which scans again and refuses on its
own); a model is verified by :func:`~mlflow_safeflavor.verify.verify_local` /
:func:`~mlflow_safeflavor.verify.verify_model`; a promotion is :func:`~mlflow_safeflavor.registry.promote`
with the same arguments the CLI passes. Errors are the library's, shown with the CLI's text.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import threading
import zipfile
from pathlib import Path
from typing import Any

from mlflow_safeflavor.errors import InvalidArgumentError, PickleRefusedError
from mlflow_safeflavor.ui.config import UIConfig
from mlflow_safeflavor.ui.jobs import JobContext
from mlflow_safeflavor.ui.workspace import Upload

# URIs the page resolves through MLflow, against the tracking server it was started with. Local
# paths and file:// are refused (upload the file instead): a page that reads any path on the server
# for whoever can reach it would be a file oracle. A URI that names a host, credentials or a
# profile (``mlflow-artifacts://host:port/...``, ``models://profile@databricks/...``, wasbs/abfss/
# hdfs, http(s)) is refused too: the page would send its own MLflow or cloud credentials there.
URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "dbfs:/", "s3://", "gs://")
_NO_NETLOC = frozenset({"runs", "models", "mlflow-artifacts", "dbfs"})
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def _uri_problem(text: str) -> str | None:
    """Why the page will not resolve ``text`` (None when it will)."""
    from urllib.parse import unquote, urlsplit

    if not text.startswith(URI_SCHEMES):
        return f"is not a model URI this page resolves (use {', '.join(URI_SCHEMES)})"
    try:
        parts = urlsplit(text)
    except ValueError:
        return "is not a well-formed URI"
    if parts.query or parts.fragment or "\\" in text:
        return "carries a query, a fragment or a backslash, which model URIs never do"
    scheme, netloc = parts.scheme.lower(), parts.netloc
    if scheme in _NO_NETLOC and netloc:
        return (f"names a host, credentials or a profile ({netloc[:60]!r}); the page only resolves URIs "
                f"against its own tracking server (write {scheme}:/<path>)")
    if scheme not in _NO_NETLOC:
        try:
            ipaddress.ip_address(netloc)
            is_ip = True
        except ValueError:
            is_ip = False
        if not _BUCKET.fullmatch(netloc) or is_ip:
            return f"does not name a plain bucket ({netloc[:60]!r}: no hosts, addresses, ports or credentials)"
    segments = unquote(parts.path).split("/")
    if any(seg in (".", "..") for seg in segments) or "\x00" in unquote(parts.path):
        return "has '.' or '..' segments"
    return None


def scan_view(report: Any) -> dict[str, Any]:
    """A ScanReport as the page shows it, with the library's own refusal message when refused."""
    out = report.to_dict()
    out["message"] = None
    try:
        report.raise_if_refused()
    except PickleRefusedError as exc:
        out["message"] = exc.message
    return out


def scan_upload(upload: Upload, config: UIConfig, cancel: threading.Event | None = None) -> dict[str, Any]:
    """The static scan of an uploaded pickle (nothing is unpickled), isolated and under the scan budget.

    The decompressed stream is capped at the page's upload cap; ``cancel`` stops the scan (and
    kills its process) when the client went away.
    """
    from mlflow_safeflavor.migrate import scan_pickle
    from mlflow_safeflavor.ui.config import ENV_MAX_UPLOAD_MB

    f = upload.files["file"]
    return scan_view(scan_pickle(f.path, label=f.display, trusted_types=config.trusted_types, isolated=True,
                                 max_bytes=config.max_upload_bytes, max_bytes_setting=ENV_MAX_UPLOAD_MB, cancel=cancel))


def check_uri(uri: Any) -> str:
    """``uri`` stripped, if it is an MLflow URI the page resolves; else InvalidArgumentError."""
    text = uri.strip() if isinstance(uri, str) else ""
    if not text or len(text) > 2048 or any(ord(c) < 32 for c in text):
        raise InvalidArgumentError("paste an MLflow model URI such as models:/churn/3 or runs:/<run id>/model.")
    problem = _uri_problem(text)
    if problem is not None:
        raise InvalidArgumentError(
            f"{text[:120]!r} {problem}. Files on disk and other hosts are not read from the page: "
            "upload the pickle instead, or use `mlflow-safeflavor convert` on the command line."
        )
    return text


def scan_uri(ctx: JobContext, uri: str, config: UIConfig) -> dict[str, Any]:
    """Classify a model URI from its MLmodel and scan its pickle payload, if it has one."""
    from mlflow_safeflavor.migrate import scan_pickle
    from mlflow_safeflavor.migrate.source import resolve

    ctx.stage("downloading the model's files")
    src = resolve(check_uri(uri), ctx.dir, uri_only=True)  # never a local path, whatever the cwd holds
    ctx.names[str(ctx.dir)] = "<download>"
    scan = None
    if src.kind == "pickle":
        ctx.stage("scanning the pickle")
        scan = scan_view(scan_pickle(src.file, label=f"{uri} ({src.file.name})", trusted_types=config.trusted_types,
                                     isolated=True))
    return {
        "uri": uri, "flavor": src.flavor, "serialization": src.serialization, "kind": src.kind,
        "model_class": src.model_class, "scan": scan, "convertible": scan is None or scan["ok"],
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "model"


def _package(ctx: JobContext, model_dir: Path, stem: str) -> int:
    """Zip the converted model for download (top folder ``<stem>.safeflavor``) and drop the directory."""
    ctx.stage("packaging the zip")
    top = f"{_slug(stem)}.safeflavor"
    zip_path = ctx.dir / "model.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, f"{top}/{path.relative_to(model_dir).as_posix()}")
    ctx.job.download, ctx.job.download_name = zip_path, f"{top}.zip"
    from mlflow_safeflavor.ui.workspace import Workspace

    Workspace.remove(model_dir)
    return zip_path.stat().st_size


def _convert_and_verify(ctx: JobContext, source: Any, stem: str, sample: Any, config: UIConfig, *,
                        uri_only: bool = False) -> dict[str, Any]:
    from mlflow_safeflavor.migrate import convert
    from mlflow_safeflavor.verify import format_result, verify_local

    ctx.stage("converting: static scan, then rebuild, save and compare predictions in an isolated process")
    dest = ctx.dir / "model"
    ctx.names[str(dest)] = "<converted model>"
    result = convert(source, dest_path=dest, sample_input=sample, trusted_types=config.trusted_types, uri_only=uri_only)
    ctx.stage("verifying the converted model")
    # A model converted a moment ago has no signature yet: the page's --public-key is for registry
    # versions, not for this report (MLFLOW_SAFEFLAVOR_PUBLIC_KEY, if set, still applies).
    report = verify_local(dest, trusted_types=config.trusted_types)
    conversion = result.to_dict()
    conversion["path"] = None
    conversion["summary"] = result.format().replace(str(dest), "the zip below")
    size = _package(ctx, dest, stem)
    return {"conversion": conversion, "verify": report.to_dict(), "verify_text": format_result(report), "zip_bytes": size}


def convert_upload(ctx: JobContext, upload: Upload, config: UIConfig) -> dict[str, Any]:
    """Convert an uploaded pickle (its sample rows, or 64 synthetic rows) and zip the result."""
    f = upload.files["file"]
    sample = upload.files.get("sample")
    _still_ours(upload)
    ctx.names[str(f.path)] = f.display
    if sample is not None:
        ctx.names[str(sample.path)] = sample.display
    ctx.names[str(upload.dir)] = "<upload>"
    stem = f.display.rsplit(".", 1)[0]
    return _convert_and_verify(ctx, f.path, stem, str(sample.path) if sample else "synthetic", config)


def _still_ours(upload: Upload) -> None:
    """Refuse a held upload whose directory or files are no longer what the page wrote.

    Anything that can write to the workspace could swap a held file for a symlink to another file
    on the server between the scan and the conversion; the conversion reads only plain files.
    """
    try:
        st = os.lstat(upload.dir)
        ok = stat.S_ISDIR(st.st_mode) and all(
            stat.S_ISREG(os.lstat(f.path).st_mode) and os.path.dirname(f.path) == str(upload.dir) for f in upload.files.values())
    except OSError:
        ok = False
    if not ok:
        raise InvalidArgumentError("the held upload changed on disk after its scan (a file is missing, linked or not "
                                   "a regular file); nothing was converted. Upload the file again.")


def convert_uri(ctx: JobContext, uri: str, synthetic: bool, config: UIConfig) -> dict[str, Any]:
    """Convert the model at an MLflow URI (its input example, or synthetic rows) and zip the result."""
    stem = uri.split(":", 1)[-1].strip("/").replace("/", "-")  # models:/churn/3 -> churn-3
    return _convert_and_verify(ctx, check_uri(uri), stem, "synthetic" if synthetic else None, config, uri_only=True)


def verify_version(ctx: JobContext, name: str, version: str, config: UIConfig) -> dict[str, Any]:
    """The full verify report of a registry version, plus the load-time ``safeflavor.verified`` check."""
    from mlflow_safeflavor.errors import IntegrityError
    from mlflow_safeflavor.registry.core import TAG_VERIFIED
    from mlflow_safeflavor.registry.store import download_registered, get_client, get_version
    from mlflow_safeflavor.verify import format_result, verify_model

    uri = f"models:/{name}/{version}"
    mv = get_version(get_client(), name, version)
    ctx.stage("downloading the version's stored artifacts and verifying them")
    local = ctx.dir / "verify"
    local.mkdir()
    ctx.names[str(local)] = uri
    result = verify_model(uri, public_key=config.public_key or None, trusted_types=config.trusted_types, dst_path=str(local))
    tag = (mv.tags or {}).get(TAG_VERIFIED)
    tag_check = None
    if tag:
        ctx.stage(f"comparing the stored artifacts with the {TAG_VERIFIED} tag (what our loaders check)")
        again = ctx.dir / "tag"
        again.mkdir()
        ctx.names[str(again)] = uri
        try:
            download_registered(uri, str(again), check_tag=True)
            tag_check = {"ok": True, "detail": f"the stored artifacts still hash to {tag}"}
        except IntegrityError as exc:
            tag_check = {"ok": False, "detail": exc.message}
    return {"uri": uri, "verify": result.to_dict(), "verify_text": format_result(result), "tag_check": tag_check}


def convert_version(ctx: JobContext, name: str, version: str, target: str | None, synthetic: bool,
                    config: UIConfig) -> dict[str, Any]:
    """Convert a registry version and register the result as a new version (of ``target`` or the same model)."""
    from mlflow_safeflavor.migrate import convert

    ctx.stage("converting: download, static scan, rebuild and compare in an isolated process, then register")
    result = convert(f"models:/{name}/{version}", registered_model_name=target or name,
                     sample_input="synthetic" if synthetic else None, trusted_types=config.trusted_types)
    out = result.to_dict()
    out["path"] = None
    out["summary"] = result.format()
    return {"conversion": out, "new_name": result.registered_name, "new_version": result.registered_version}


def promote_version(ctx: JobContext, name: str, version: str, alias: str, config: UIConfig) -> dict[str, Any]:
    """``promote`` with the page's policy — the same call, checks and errors as ``mlflow-safeflavor promote``."""
    from mlflow_safeflavor.registry import promote

    ctx.stage("verifying, smoke-testing in a child process, tagging, then setting the alias")
    result = promote(name, version, alias, public_key=config.public_key or None, signing_key=config.signing_key,
                     signing_password=config.signing_password, trusted_types=config.trusted_types)
    return {
        "name": result.name, "version": result.version, "alias": result.alias, "digest": result.digest,
        "signed": result.signed, "policy": result.policy,
        "message": (f"promoted {result.name} version {result.version} to @{result.alias} "
                    f"(safeflavor.verified={result.digest}{', signed' if result.signed else ''})"),
    }
