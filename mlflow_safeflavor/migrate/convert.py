"""Convert one pickled (or natively stored) model into the safe flavor, proving it predicts the same.

Order of work, and why: (1) classify the source from names only; (2) scan a pickle statically and
refuse before anything is unpickled; (3) rebuild, predict and save in an isolated, resource-limited
child process (a crafted native payload can at worst kill the child); (4) in this process, load the
saved model with the safe loader — every digest, trust and structure check — and require identical
predictions on the sample; (5) only then write ``dest_path`` or log and register.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor.errors import ConversionError, InvalidArgumentError, PickleRefusedError, UntrustedTypesError
from mlflow_safeflavor.migrate.pickles import ScanReport, scan_pickle
from mlflow_safeflavor.migrate.source import Source, resolve
from mlflow_safeflavor.settings import env_number

ENV_CONVERT_TIMEOUT = "MLFLOW_SAFEFLAVOR_CONVERT_TIMEOUT"
ENV_CONVERT_MEMORY_MB = "MLFLOW_SAFEFLAVOR_CONVERT_MEMORY_MB"
DEFAULT_TIMEOUT = 600.0
DEFAULT_MEMORY_MB = 8192
CHILD_MODULE = "mlflow_safeflavor.migrate._child"
EXAMPLE_ROWS = 5

TAG_CONVERTED_FROM = "safeflavor.converted_from"
TAG_SOURCE_FORMAT = "safeflavor.source_format"
TAG_CONVERTED_AT = "safeflavor.converted_at"


@dataclass
class ConversionResult:
    """What a successful conversion produced and what it checked."""

    source: str
    source_format: str
    model_class: str
    path: str | None = None
    model_uri: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None
    methods: list[str] = field(default_factory=list)
    rows_compared: int = 0
    scan: ScanReport | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output and the web page."""
        out = {k: v for k, v in self.__dict__.items() if k != "scan"}
        out["scan"] = self.scan.to_dict() if self.scan else None
        return out

    def format(self) -> str:
        """One paragraph for the command line."""
        where = []
        if self.path:
            where.append(f"saved to {self.path}")
        if self.registered_name:
            where.append(f"registered as {self.registered_name} version {self.registered_version}")
        return (
            f"converted {self.source} ({self.source_format}, {self.model_class}): identical "
            f"{', '.join(self.methods)} on {self.rows_compared} rows; {'; '.join(where)} "
            f"[{self.seconds:.1f}s]"
        )


def convert(
    source: str | os.PathLike,
    *,
    dest_path: str | os.PathLike | None = None,
    registered_model_name: str | None = None,
    sample_input: Any = None,
    trusted_types: str | Iterable[str] | None = None,
    timeout: float | None = None,
    tags: dict[str, str] | None = None,
    onnx: bool | str | None = None,
    uri_only: bool = False,
) -> ConversionResult:
    """Convert a pickled or MLflow-built-in model into the safe flavor without trusting the pickle.

    ``source`` is a ``.pkl``/``.pickle``/``.joblib`` file or an MLflow model URI/path written by the
    sklearn, xgboost, lightgbm or catboost flavor. A pickle is scanned before anything is unpickled
    and refused (PickleRefusedError, listing every offending import) unless every import is on the
    loader's allowlist plus the named numpy/scikit-learn constructors; it is then rebuilt by a
    restricted unpickler in an isolated child process, saved with the safe flavor, reloaded here by
    the safe loader, and must give identical predictions on ``sample_input`` (a DataFrame, array
    or a .csv/.json/.parquet/.npy file; default: the source's saved input example; ``"synthetic"``:
    64 random rows shaped like the model's input, for pickles shipped without data). Only then is
    the result written to ``dest_path`` (default: ``<file>.safeflavor`` beside a pickle file) and/or
    logged and registered as ``registered_model_name`` with the source version's signature, input
    example and tags, plus ``safeflavor.converted_from``. Raises ConversionError when predictions
    differ or the child crashes or times out; nothing is written then. ``onnx`` is passed to
    ``save_model`` (default "auto": an ONNX export is added when it provably agrees). The scan runs
    in a child process under the scan budget (``MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT``,
    ``MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB``, ``MLFLOW_SAFEFLAVOR_SCAN_MAX_MB``); exceeding it is a
    PickleRefusedError naming the limit. With ``uri_only`` ``source`` is resolved only as an MLflow
    URI, never as a local path.
    """
    started = time.monotonic()
    if registered_model_name is not None and (not isinstance(registered_model_name, str) or not registered_model_name.strip()):
        raise InvalidArgumentError("registered_model_name must be a non-empty string.")
    if dest_path is not None and os.path.exists(dest_path):
        raise InvalidArgumentError(f"{dest_path}: already exists; choose a new output directory.", path=os.fspath(dest_path))
    with tempfile.TemporaryDirectory(prefix="safeflavor-convert-") as tmp:
        work = Path(tmp)
        src = resolve(source, work, uri_only=uri_only)
        scan = None
        if src.kind == "pickle":
            scan = scan_pickle(src.file, label=src.label if src.root is None else f"{src.label} ({src.file.name})",
                               trusted_types=trusted_types, isolated=True)
            scan.raise_if_refused()
        job = _job(src, work, sample_input, trusted_types)
        job["onnx"] = onnx
        (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
        outcome = _run_child(job, timeout)
        methods, model_class, rows = _check_against_safe_load(work, job, trusted_types, src)
        if dest_path is None and registered_model_name is None:
            dest_path = _default_dest(src)
        result = ConversionResult(
            source=src.label, source_format=f"{src.flavor + ' flavor, ' if src.flavor else ''}{src.serialization}",
            model_class=model_class, methods=methods, rows_compared=rows, scan=scan,
        )
        if dest_path is not None:
            result.path = _place(work / "out" / "model", Path(dest_path))
        if registered_model_name is not None:
            _register(work / "out" / "model", src, registered_model_name, result, tags or {})
        del outcome
    result.seconds = time.monotonic() - started
    return result


# ------------------------------------------------------------------------------------- the job

def _job(src: Source, work: Path, sample_input: Any, trusted_types: Any) -> dict[str, Any]:
    from mlflow_safeflavor.policy import parse_type_list

    out = work / "out"
    out.mkdir()
    signature, example, predict_method = _source_metadata(src)
    sample = sample_input if sample_input is not None else example
    if sample is None:
        raise InvalidArgumentError(
            f"{src.label}: no sample input to compare predictions on, and the source has no saved "
            "input example. Pass sample_input= (CLI: --sample FILE with .csv, .json, .parquet or .npy "
            "rows shaped like the model's input).",
            path=src.label,
        )
    synthetic = isinstance(sample, str) and sample == "synthetic"
    if not synthetic:
        sample = _read_sample_arg(sample)
    job: dict[str, Any] = {
        "kind": src.kind,
        "file": str(src.file),
        "label": src.label,
        "model_class": src.model_class,
        "trusted_types": parse_type_list(trusted_types, source="trusted_types=") + parse_type_list(os.environ.get("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES"), source="MLFLOW_SAFEFLAVOR_TRUSTED_TYPES"),
        "sample": {"format": "synthetic"} if synthetic else _write_data(sample, work / "sample"),
        "example": _write_data(example, work / "example") if example is not None else None if synthetic else _write_data(_head(sample), work / "example"),
        "signature": signature.to_dict() if signature is not None else None,
        "predict_method": predict_method,
        "out": str(out),
    }
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    return job


def _source_metadata(src: Source) -> tuple[Any, Any, str | None]:
    """Signature, input example and pyfunc predict method of an MLflow source (never its payload)."""
    if src.root is None:
        return None, None, None
    from mlflow.models import Model

    from mlflow_safeflavor.codecs.base import PREDICT_METHODS

    try:
        model = Model.load(str(src.root))
        example = model.load_input_example(str(src.root))
    except Exception as exc:  # MLflow raises several types for a malformed MLmodel or example
        raise InvalidArgumentError(f"{src.label}: its MLmodel or input example cannot be read ({type(exc).__name__}: {str(exc)[:200]}).", path=src.label) from None
    pyfunc = model.flavors.get("python_function", {}) or {}
    method = pyfunc.get("predict_fn")
    return model.signature, example, method if method in PREDICT_METHODS else None


def _read_sample_arg(sample: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(sample, (str, os.PathLike)):
        p = Path(sample)
        suffix = p.suffix.lower()
        try:
            if suffix == ".csv":
                return pd.read_csv(p)
            if suffix == ".json":
                return pd.read_json(p, orient="split" if _json_is_split(p) else None)
            if suffix == ".parquet":
                return pd.read_parquet(p)
            if suffix == ".npy":
                return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{p}: cannot read the sample ({str(exc)[:200]}).", path=str(p)) from None
        raise InvalidArgumentError(f"{p}: sample files must be .csv, .json, .parquet or .npy.", path=str(p))
    if isinstance(sample, (pd.DataFrame, np.ndarray)):
        return sample
    if isinstance(sample, pd.Series):
        return sample.to_frame().T
    if isinstance(sample, (list, tuple, dict)):
        return pd.DataFrame(sample) if isinstance(sample, dict) or (sample and isinstance(sample[0], dict)) else np.asarray(sample)
    raise InvalidArgumentError(f"sample_input of type {type(sample).__name__} is not supported; pass a DataFrame, an array or a file path.")


def _json_is_split(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(doc, dict) and "columns" in doc and "data" in doc


def _head(sample: Any) -> Any:
    return sample.head(EXAMPLE_ROWS) if hasattr(sample, "head") else sample[:EXAMPLE_ROWS]


def _write_data(data: Any, stem: Path) -> dict[str, str]:
    """Write a DataFrame as parquet or an array as .npy (never pickle) for the child to read."""
    import numpy as np
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        path = stem.with_suffix(".parquet")
        frame = data.copy()
        frame.columns = [str(c) for c in frame.columns] if not all(isinstance(c, str) for c in frame.columns) else frame.columns
        frame.to_parquet(path, index=False)
        return {"format": "parquet", "path": str(path)}
    arr = np.asarray(data)
    if arr.dtype == object:
        raise InvalidArgumentError("the sample is an array of Python objects; pass a DataFrame or a numeric array.")
    path = stem.with_suffix(".npy")
    np.save(path, arr, allow_pickle=False)
    return {"format": "npy", "path": str(path)}


def _run_child(job: dict[str, Any], timeout: float | None) -> Any:
    from mlflow_safeflavor.integrity import DEFAULT_MAX_FILE_BYTES, ENV_MAX_FILE_BYTES, _cap
    from mlflow_safeflavor.registry.smoke import run_limited

    timeout = timeout if timeout is not None else env_number(ENV_CONVERT_TIMEOUT, DEFAULT_TIMEOUT)
    memory = int(env_number(ENV_CONVERT_MEMORY_MB, DEFAULT_MEMORY_MB))
    outcome = run_limited(
        [CHILD_MODULE, str(Path(job["out"]).parent / "job.json")],
        timeout=timeout, memory_mb=memory, file_bytes=_cap(ENV_MAX_FILE_BYTES, DEFAULT_MAX_FILE_BYTES),
        timeout_env=ENV_CONVERT_TIMEOUT, what="conversion",
    )
    if outcome.ok:
        return outcome
    err_file = Path(job["out"]) / "error.json"
    if err_file.is_file():
        err = json.loads(err_file.read_text(encoding="utf-8"))
        if err.get("type") == "PickleRefusedError":
            raise PickleRefusedError(f"{job['label']}: {err['message']}", findings=err.get("findings"), path=job["label"])
        if err.get("type") == "UntrustedTypesError":
            raise UntrustedTypesError(f"{job['label']}: {err['message']}", types=err.get("findings"), path=job["label"])
        if err.get("type") in ("MalformedArtifactError", "IntegrityError", "UnsupportedModelError", "InvalidArgumentError"):
            raise ConversionError(f"{job['label']}: cannot be converted: {err['message']}", path=job["label"])
    raise ConversionError(
        f"{job['label']}: the isolated conversion failed: {outcome.detail}. Nothing was written.",
        path=job["label"],
    )


def _check_against_safe_load(work: Path, job: dict[str, Any], trusted_types: Any, src: Source) -> tuple[list[str], str, int]:
    """Reload the saved model with the safe loader and require identical predictions."""
    import numpy as np

    from mlflow_safeflavor.codecs import codec_for
    from mlflow_safeflavor.flavor import load_model
    from mlflow_safeflavor.migrate._child import _read_sample
    from mlflow_safeflavor.migrate.compare import difference, to_plain_array

    out = work / "out"
    info = json.loads((out / "result.json").read_text(encoding="utf-8"))
    if job["sample"]["format"] == "synthetic":
        job["sample"] = json.loads((out / "sample.json").read_text(encoding="utf-8"))
    model = load_model(str(out / "model"), trusted_types=trusted_types)
    codec = codec_for(model)
    sample = _read_sample(job["sample"])
    problems = []
    for method in info["methods"]:
        expected = np.load(out / "predictions" / f"{method}.npy", allow_pickle=False)
        actual = to_plain_array(codec.predict(model, method, sample))
        diff = difference(expected, actual)
        if diff:
            problems.append(f"{method}: {diff}")
    if problems:
        raise ConversionError(
            f"{src.label}: the converted model does not predict identically to the source on the "
            f"sample ({'; '.join(problems)}). Nothing was written or registered. Report this with the "
            "model's library versions.",
            path=src.label,
        )
    return list(info["methods"]), info["model_class"], len(sample)


# ------------------------------------------------------------------------------------ outputs

def _default_dest(src: Source) -> Path:
    if src.root is None:
        base = src.file.with_name(src.file.stem + ".safeflavor")
    else:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in src.label.split(":/")[-1].strip("/"))[:80] or "model"
        base = Path.cwd() / f"{slug}.safeflavor"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _place(model_dir: Path, dest: Path) -> str:
    """Copy the finished model next to ``dest`` and rename it into place (no half-written output)."""
    dest = dest.resolve()
    if dest.exists():
        raise InvalidArgumentError(f"{dest}: already exists; choose a new output directory.", path=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(model_dir, staging / "m")
        os.rename(staging / "m", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(dest)


def _register(model_dir: Path, src: Source, name: str, result: ConversionResult, extra_tags: dict[str, str]) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.registry.core import now_iso

    client = MlflowClient()
    source_ref = f"models:/{src.registered[0]}/{src.registered[1]}" if src.registered else src.label
    version_tags: dict[str, str] = {}
    description = None
    experiment_id = None
    if src.registered:
        mv = client.get_model_version(*src.registered)
        # The gate's tags describe the old artifacts; they must not vouch for the new ones.
        version_tags.update({k: v for k, v in (mv.tags or {}).items() if not k.startswith("safeflavor.")})
        description = mv.description or None
    if src.run_id:
        try:
            experiment_id = client.get_run(src.run_id).info.experiment_id
        except MlflowException:
            experiment_id = None
    version_tags.update(extra_tags)
    version_tags.update({TAG_CONVERTED_FROM: source_ref, TAG_SOURCE_FORMAT: result.source_format, TAG_CONVERTED_AT: now_iso()})
    if experiment_id is None:
        from mlflow_safeflavor._mlflow_compat import active_experiment_id

        experiment_id = active_experiment_id()
    try:
        run = client.create_run(experiment_id, run_name="safeflavor-convert", tags={TAG_CONVERTED_FROM: source_ref})
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
        client.set_terminated(run.info.run_id)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri.rstrip('/')}/model", run_id=run.info.run_id,
            tags=version_tags, description=description,
        )
    except MlflowException as exc:
        raise ConversionError(f"{src.label}: converted, but logging or registering failed ({str(exc.message)[:300]}).") from None
    result.model_uri = f"runs:/{run.info.run_id}/model"
    result.registered_name, result.registered_version = name, str(mv.version)
