"""Find out what a conversion source is, from its file name and MLmodel, without loading it.

A source is a local pickle/joblib file, or an MLflow model (a local directory, ``runs:/``,
``models:/`` or any artifact URI) written by MLflow's sklearn, xgboost, lightgbm or catboost
flavor. Only names from MLmodel's flavor sections are read here — never the payload.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor.errors import InvalidArgumentError, UnsupportedModelError
from mlflow_safeflavor.filekinds import PICKLE_SUFFIXES
from mlflow_safeflavor.migrate.pickles import ScanReport, scan_pickle

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:, models:, s3:, file: ... (as loader.fetch)

# MLflow flavor ``model_class`` values → our codecs' class keys. Anything else is refused.
_NATIVE_CLASS_KEYS = {
    "xgboost": {
        "xgboost.core.Booster": "Booster",
        **{f"xgboost.sklearn.{c}": c for c in ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")},
    },
    "lightgbm": {"lightgbm.basic.Booster": "Booster"},
    "catboost": {c: c for c in ("CatBoost", "CatBoostClassifier", "CatBoostRegressor", "CatBoostRanker")},
}


@dataclass
class Source:
    """A resolved conversion source: where its payload is and how it is stored."""

    label: str
    kind: str  # "pickle", "skops", "xgboost", "lightgbm", "catboost"
    file: Path
    root: Path | None = None  # the MLflow model directory, when the source is one
    flavor: str | None = None  # the MLflow flavor that wrote it
    serialization: str = "pickle"  # pickle, cloudpickle, joblib, skops or native
    model_class: str | None = None  # our codec's class key, for native sources
    registered: tuple[str, str] | None = None  # (name, version) for a registry source
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_pickle_file(path: str | os.PathLike) -> bool:
    """True for a local file whose name ends in one of the pickle/joblib suffixes."""
    p = Path(path)
    return p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()


def resolve(source: str | os.PathLike, workdir: Path, *, uri_only: bool = False) -> Source:
    """Classify ``source`` and bring its files to a local directory under ``workdir``.

    With ``uri_only`` the text is only ever resolved as an MLflow URI, never as a local path — even
    when the working directory holds a file or directory of that name (``models:``). A pickle file
    given by path must be a regular file, not a symlink (the link is not followed).
    Raises InvalidArgumentError for a source that cannot be found and UnsupportedModelError for an
    MLflow model no conversion path covers (the message says which flavors are covered).
    """
    text = os.fspath(source)
    registered = None
    if uri_only:
        root, registered = _download(text, workdir / "source")
    elif os.path.islink(text) and text.lower().endswith(PICKLE_SUFFIXES):
        raise InvalidArgumentError(f"{text}: is a symbolic link; pass the pickle file itself (links are not followed).", path=text)
    elif is_pickle_file(text):
        serialization = "joblib" if text.lower().endswith(".joblib") else "pickle"
        # abspath, not resolve(): the path that was checked is the path that is read.
        return Source(label=text, kind="pickle", file=Path(os.path.abspath(text)), serialization=serialization)
    elif os.path.isdir(text):
        root = Path(text).resolve()
    elif os.path.exists(text):
        raise InvalidArgumentError(
            f"{text}: not a pickle file (expected one of {', '.join(PICKLE_SUFFIXES)}) nor an MLflow "
            "model directory.",
            path=text,
        )
    elif not _SCHEME.match(text):
        # A bare path that does not exist is a typo, not an artifact location to ask MLflow about.
        raise InvalidArgumentError(
            f"{text}: no such file or directory. Pass a pickle file ({', '.join(PICKLE_SUFFIXES)}), an MLflow model "
            "directory or an MLflow model URI (runs:/<run_id>/<name>, models:/<name>/<version>).",
            path=text,
        )
    else:
        root, registered = _download(text, workdir / "source")
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise InvalidArgumentError(f"{text}: no MLmodel file at {root}; not an MLflow model.", path=text)
    import yaml

    try:
        doc = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{mlmodel}: not readable YAML ({str(exc)[:200]}).", path=str(mlmodel)) from None
    flavors = (doc or {}).get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict):
        raise InvalidArgumentError(f"{mlmodel}: has no flavors section.", path=str(mlmodel))
    src = _from_flavors(text, root, flavors)
    src.registered = registered
    src.run_id = doc.get("run_id") if isinstance(doc.get("run_id"), str) else None
    return src


def _download(uri: str, dst: Path) -> tuple[Path, tuple[str, str] | None]:
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.registry.store import download_version, get_client, parse_registered_uri

    dst.mkdir(parents=True, exist_ok=True)
    parsed = parse_registered_uri(uri)
    try:
        if parsed is not None:
            from mlflow.store.artifact.utils.models import get_model_name_and_version

            client = get_client()
            name, version = get_model_name_and_version(client, parsed[0])
            local = download_version(client, name, version, str(dst))
            return Path(local).resolve(), (name, str(version))
        import mlflow

        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
        return Path(local).resolve(), None
    except MlflowException as exc:
        raise InvalidArgumentError(f"{uri}: cannot be downloaded ({' '.join(str(exc.message).split())[:300]}). "
                                   "Check the URI and MLFLOW_TRACKING_URI.", path=uri) from None


def _file_in(root: Path, name: Any, label: str) -> Path:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in Path(name).parts:
        raise InvalidArgumentError(f"{label}: MLmodel names the payload {name!r}, which is not a file inside the model.", path=label)
    path = root / name
    if path.is_symlink() or not path.is_file():
        raise InvalidArgumentError(f"{label}: the payload {name!r} named in MLmodel is missing or not a regular file.", path=label)
    return path


def _from_flavors(label: str, root: Path, flavors: dict[str, Any]) -> Source:
    if "safeflavor" in flavors:
        raise InvalidArgumentError(
            f"{label}: already stored with mlflow-safeflavor; nothing to convert (verify it with "
            "`mlflow-safeflavor verify`).",
            path=label,
        )
    for name in ("xgboost", "lightgbm", "catboost", "sklearn"):
        conf = flavors.get(name)
        if isinstance(conf, dict):
            break
    else:
        raise UnsupportedModelError(
            f"{label}: flavors {sorted(flavors)}; conversion covers MLflow's sklearn, xgboost, lightgbm "
            "and catboost flavors. Re-export the model from its training code with "
            "mlflow_safeflavor.log_model.",
            path=label,
        )
    if conf.get("code"):
        raise UnsupportedModelError(
            f"{label}: the {name} flavor ships a code/ directory (code_paths); a model that needs "
            "custom code cannot be converted without running it. Re-export it from its training code.",
            path=label,
        )
    fmt = conf.get("serialization_format")
    if name == "sklearn" or (name == "lightgbm" and conf.get("model_class") != "lightgbm.basic.Booster"):
        file = _file_in(root, conf.get("pickled_model") if name == "sklearn" else conf.get("data"), label)
        if fmt == "skops":
            return Source(label, "skops", file, root, name, "skops")
        if fmt not in ("pickle", "cloudpickle", None):
            raise UnsupportedModelError(f"{label}: unknown {name} serialization_format {fmt!r}.", path=label)
        return Source(label, "pickle", file, root, name, fmt or "pickle")
    key = _NATIVE_CLASS_KEYS[name].get(conf.get("model_class") if name != "catboost" else conf.get("model_type"))
    if key is None:
        raise UnsupportedModelError(
            f"{label}: {name} model class {conf.get('model_class') or conf.get('model_type')!r} is not one "
            f"the safe flavor stores (known: {sorted(_NATIVE_CLASS_KEYS[name])}).",
            path=label,
        )
    if name == "catboost" and conf.get("save_format", "cbm") != "cbm":
        raise UnsupportedModelError(f"{label}: CatBoost save_format {conf.get('save_format')!r}; only cbm is converted.", path=label)
    file = _file_in(root, conf.get("data"), label)
    return Source(label, name, file, root, name, "native", model_class=key)


def classify_flavors(flavors: Any) -> tuple[str, str]:
    """``(flavor, format)`` of an MLmodel ``flavors`` section, read from names only.

    Formats: ``safe flavor (<codec>)``, ``pickle``, ``cloudpickle``, ``skops``, ``native`` or
    ``unknown``; the flavor is the MLflow flavor that wrote the payload (``pyfunc:<module>`` for
    pyfunc-only models).
    """
    if not isinstance(flavors, dict):
        return "none", "unknown"
    if isinstance(flavors.get("safeflavor"), dict):
        return "safeflavor", f"safe flavor ({flavors['safeflavor'].get('codec', '?')})"
    for name in ("sklearn", "lightgbm", "xgboost", "catboost"):
        conf = flavors.get(name)
        if not isinstance(conf, dict):
            continue
        if name in ("xgboost", "catboost") or conf.get("model_class") == "lightgbm.basic.Booster":
            return name, "native"
        fmt = conf.get("serialization_format") or "pickle"
        return name, fmt if fmt in ("pickle", "cloudpickle", "skops") else "unknown"
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, dict):
        loader = pyfunc.get("loader_module")
        others = sorted(k for k in flavors if k != "python_function")
        fmt = "cloudpickle" if loader == "mlflow.pyfunc.model" or pyfunc.get("python_model") else "unknown"
        return (others[0] if others else f"pyfunc:{loader}"), fmt
    others = sorted(flavors)
    return (others[0] if others else "none"), "unknown"


def read_version_mlmodel(client: Any, name: str, version: str) -> dict[str, Any]:
    """Download only a registry version's MLmodel and parse it (YAML, safe loader)."""
    import tempfile

    import mlflow
    import yaml

    from mlflow_safeflavor.registry.store import storage_uri

    uri = storage_uri(client, name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=client.tracking_uri)
        with open(local, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh.read(1024 * 1024))
    return doc if isinstance(doc, dict) else {}


def search_versions(client: Any, name: str) -> list[Any]:
    """Every version of registered model ``name``, however its name is spelled.

    MLflow's filter parser has no escape for quotes: a name with ``'`` is matched by a
    double-quoted literal, one with ``"`` by a single-quoted one, and a name with both by a
    ``LIKE`` on the part before the first quote. Whatever the filter matched is then narrowed to
    exactly ``name`` here, and all pages are read, so a crafted name can neither hide its versions
    nor pull in another model's.
    """
    if "'" not in name:
        filter_string = f"name = '{name}'"
    elif '"' not in name:
        filter_string = f'name = "{name}"'
    else:
        prefix = name[: min(i for i in (name.find("'"), name.find('"')) if i >= 0)]
        filter_string = f"name LIKE '{prefix}%'"
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out += [mv for mv in page if mv.name == name]
        token = getattr(page, "token", None)
        if not token:
            return out


def scan_source(
    source: str | os.PathLike,
    *,
    trusted_types: str | Iterable[str] | None = None,
    uri_only: bool = False,
    max_bytes: int | None = None,
    max_bytes_setting: str | None = None,
    cancel: Any = None,
) -> ScanReport:
    """Scan what :func:`convert` would unpickle for ``source`` (a pickle file or an MLflow model URI).

    For an MLflow model written with pickle or cloudpickle this downloads the model and scans its
    payload; a skops payload is judged type by type with the converter's allowlist and its LightGBM
    model texts are validated (nothing is built); a native payload has nothing to unpickle, which
    the report says in ``container`` with no findings. The scan runs isolated under the scan budget (see
    :func:`~mlflow_safeflavor.migrate.scan_pickle`; ``max_bytes``, ``cancel`` are passed on; with
    ``uri_only`` local paths are never tried). Raises InvalidArgumentError/UnsupportedModelError
    for a source :func:`convert` would not take either.
    """
    with tempfile.TemporaryDirectory(prefix="safeflavor-scan-") as tmp:
        src = resolve(source, Path(tmp), uri_only=uri_only)
        if src.kind == "skops":
            from mlflow_safeflavor.migrate import skops_source

            return skops_source.scan(src.file.read_bytes(), label=f"{src.label} ({src.file.name})",
                                     container=f"{src.flavor} flavor, skops", trusted_types=trusted_types)
        if src.kind != "pickle":
            return ScanReport(source=src.label, container=f"{src.flavor} flavor, {src.serialization} (nothing to unpickle)")
        label = src.label if src.root is None else f"{src.label} ({src.file.name})"
        report = scan_pickle(src.file, label=label, trusted_types=trusted_types, isolated=True, max_bytes=max_bytes,
                             max_bytes_setting=max_bytes_setting, cancel=cancel)
        if src.root is not None:
            report.container = f"{src.flavor} flavor, {src.serialization}: {report.container}"
        return report
