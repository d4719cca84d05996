"""The decision steps, each once: every path that decides about a model runs these functions.

Each step reads what earlier steps put on :class:`Progress`, adds its own result, and returns a
one-line detail for reports; a problem raises a SafeFlavorError. :mod:`.pipeline` runs them in
order — raising at the first failure for the loaders, recording every outcome for ``verify``,
``inspect`` and the registry gate — so all of them decide by the same rules. Nothing named by the
artifact is imported here: codecs and classes come from fixed tables.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mlflow_safeflavor import integrity, policy, probe, signing
from mlflow_safeflavor.codecs import get_codec
from mlflow_safeflavor.codecs.base import Codec, Inspected
from mlflow_safeflavor.errors import (
    InvalidArgumentError,
    MalformedArtifactError,
    MissingDependencyError,
    SafeFlavorError,
)
from mlflow_safeflavor.record import FLAVOR_NAME, Record, parse_record, read_mlmodel
from mlflow_safeflavor.validate.skops_zip import looks_like_pickle

LOADER_MODULE = "mlflow_safeflavor"
ALLOWED_FLAVORS = frozenset({"python_function", FLAVOR_NAME})
# File names whose loaders unpickle; a model directory written by save_model holds none of them.
# One tuple for the loader and migration alike (re-exported here for the loader's callers).
from mlflow_safeflavor.filekinds import PICKLE_SUFFIXES  # noqa: E402
_HEAD = 256


@dataclass
class Options:
    """The loading side's settings for one decision (call arguments; the environment is read by the steps)."""

    trusted_types: Iterable[str] | None = None
    public_key: Any = None
    require_signature: bool | None = None


@dataclass
class Progress:
    """What the steps found so far about one model directory; nothing here is a built model until ``model``."""

    root: Path
    files: integrity.ModelFiles
    listing: list[str] = field(default_factory=list)
    keys: list[Path] = field(default_factory=list)
    signature: signing.SignatureResult | None = None
    mlmodel: dict[str, Any] = field(default_factory=dict)
    record: Record | None = None
    digests: list[integrity.FileCheck] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    codec: Codec | None = None
    inspected: Inspected | None = None
    required: set[str] | None = None
    decision: policy.TrustDecision | None = None
    model: Any = None
    unreadable: list[SafeFlavorError] = field(default_factory=list)


def model_root(local_path: str | os.PathLike) -> Path:
    """The model directory for a local path that is the directory or a file directly inside it."""
    path = Path(os.path.abspath(os.fspath(local_path)))
    kind = _kind(path)
    if stat.S_ISREG(kind):
        path = path.parent
        kind = _kind(path)
    if not stat.S_ISDIR(kind):
        raise MalformedArtifactError(
            f"{path}: no such model directory. Check the path, or pass an MLflow model URI "
            "(runs:/, models:/, ...).",
            path=str(path),
        )
    return path


def _kind(path: Path) -> int:
    """The file type bits of ``path`` (symbolic links followed), 0 when it cannot be reached."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return 0


def files(p: Progress, opts: Options) -> str:
    """Every entry is a regular file (no symlinks, devices, FIFOs), within count and depth caps."""
    p.listing = p.files.listing()
    return f"{len(p.listing)} regular files, no symlinks or special files"


def signature(p: Progress, opts: Options) -> str:
    """With public keys configured (call or ``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``), a valid ``model.sig`` over every file."""
    p.keys = signing.configured_keys(opts.public_key) if opts.require_signature is not False else []
    if opts.require_signature and not p.keys:
        raise InvalidArgumentError("a signature is required but no public key is configured.")
    if not p.keys:
        present = signing.SIGNATURE_FILE in p.listing
        return ("present but " if present else "") + "not checked (no public key configured)"
    p.signature = signing.verify_directory(p.files, p.keys)
    return f"valid, by {p.signature.key}, over {p.signature.files} files"


def mlmodel(p: Progress, opts: Options) -> str:
    """MLmodel is a small YAML mapping read with the safe reader."""
    p.mlmodel = read_mlmodel(p.root, p.files)
    return "MLmodel parsed"


def _flavors(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("flavors") if isinstance(doc.get("flavors"), dict) else {}


def pyfunc_conf(p: Progress, opts: Options) -> list[tuple[str, str | None, str]]:
    """The pyfunc configuration ``save_model`` writes and nothing else, as (check, problem, detail) rows.

    ``loader_module`` must be ours (``mlflow.pyfunc.load_model`` imports whatever it names), no
    other flavor (their loaders may unpickle), no shipped code (keys or ``code/`` directories) and
    no pickle anywhere in the directory. Our loaders would run none of it, but a directory that
    holds it was rewritten, and MLflow's loaders would.
    """
    flavors = _flavors(p.mlmodel)
    conf = flavors.get("python_function")
    loader = conf.get("loader_module") if isinstance(conf, dict) else conf
    rows: list[tuple[str, str | None, str]] = []
    bad_loader = loader != LOADER_MODULE
    rows.append(("loader_module", f"python_function.loader_module is {loader!r}, not {LOADER_MODULE!r}"
                 " (mlflow.pyfunc.load_model would import that module instead of ours)" if bad_loader else None,
                 f"loader_module is {loader!r}"))
    others = sorted(set(map(str, flavors)) - ALLOWED_FLAVORS)
    rows.append(("other_flavors", f"other flavors present: {others} (their loaders may unpickle)" if others else None,
                 "none"))
    code_dirs = sorted({n for n in p.listing if n.split("/")[0] == "code" or "/code/" in f"/{n}"})
    code_keys = [k for k in ("code", "model_code_path") if isinstance(conf, dict) and conf.get(k)]
    shipped = code_dirs[:5] or code_keys
    rows.append(("code", f"code shipped with the model: {shipped}" if shipped else None, "no code/ directories"))
    pickles = []
    # Payload files get their codec's stricter check (a zip, a booster, a cbm) after their digest;
    # the rest of the directory must not hold anything MLflow's loaders would unpickle.
    payload = set(p.record.files) if p.record is not None else set()
    for name in p.listing:
        if name == signing.SIGNATURE_FILE or name in payload:
            continue
        try:
            reason = _looks_pickled(name, p.files.head(name, _HEAD))
        except SafeFlavorError as exc:  # unreadable (hard link, cap): the file step's business
            p.unreadable.append(exc)
            reason = exc.message
        if reason:
            pickles.append(f"{name} {reason}")
    rows.append(("pickle", "; ".join(pickles[:10]) if pickles else None, "no pickle anywhere in the directory"))
    return rows


def check_pyfunc_conf(p: Progress, opts: Options) -> str:
    """Raise MalformedArtifactError naming every problem :func:`pyfunc_conf` finds."""
    problems = [problem for _, problem, _ in pyfunc_conf(p, opts) if problem]
    if p.unreadable:
        raise p.unreadable[0]
    if problems:
        raise MalformedArtifactError(
            f"{p.root}/MLmodel: {'; '.join(problems)}. mlflow_safeflavor.save_model never writes "
            "this; the model was rewritten. Do not load it with mlflow.pyfunc.load_model (which "
            "would run that code); obtain the original model.",
            path=str(p.root),
        )
    return "pyfunc configuration is what save_model writes"


def _looks_pickled(name: str, head: bytes) -> str | None:
    if name.lower().endswith(PICKLE_SUFFIXES):
        return "has a pickle file name"
    if looks_like_pickle(head[:2]):
        return "starts like a pickle stream"
    if head[:6] == b"\x93NUMPY" and b"'descr': '|O'" in head:
        return "is an object-dtype numpy array (a pickle inside)"
    return None


def record(p: Progress, opts: Options) -> str:
    """The ``safeflavor`` section has the schema this release reads (codec, class key, digests, trust)."""
    p.record = parse_record(p.mlmodel, root=p.root)
    return f"codec {p.record.codec}, model class {p.record.model_class}"


def digests(p: Progress, opts: Options) -> str:
    """Every payload file recorded in MLmodel hashes to its recorded SHA-256 (read once, kept for the codec)."""
    assert p.record is not None
    p.digests = integrity.check_digests(p.files, p.record.files)
    for check in p.digests:
        if check.error is not None:
            raise check.error
    p.blobs = {c.name: c.data for c in p.digests if c.data is not None}
    return f"{len(p.blobs)} payload files match MLmodel"


def inspect(p: Progress, opts: Options) -> str:
    """What the payload needs trusted, read from the verified bytes without building anything."""
    assert p.record is not None
    p.codec = get_codec(p.record.codec, path=str(p.root))
    # Read and checked once (skops' node tree made once); ``build`` later constructs from it.
    with _typed(p, "read"):
        p.inspected = p.codec.inspect(p.blobs, p.record, path=str(p.root))
    p.required = set(p.inspected.required)
    return "payload needs: " + (", ".join(sorted(p.required)) or "nothing beyond the built-in allowlist")


def trust(p: Progress, opts: Options) -> str:
    """required ⊆ declared ⊆ allowed, where allowed is the loading side's policy minus the hard-deny list."""
    assert p.record is not None and p.required is not None
    p.decision = policy.decide(p.required, p.record.trusted_types, policy.loading_policy(opts.trusted_types))
    policy.enforce(p.decision, path=str(p.root))
    return p.decision.explain()


def build(p: Progress, opts: Options) -> str:
    """Validate the payload's structure and build the model from the verified bytes, then use it once.

    Whatever a library raises on bytes that passed every earlier check — a parser error, a
    decoding error, an allocation failure — is a malformed artifact, never a leak of the library's
    own exception; a missing package is named as such.
    """
    assert p.codec is not None and p.inspected is not None and p.decision is not None
    with _typed(p, "build a working model from"):
        p.model = p.inspected.build(list(p.decision.required))
        probe.first_use(p.codec.name, p.model, p.record.predict_method)
    return "payload structure valid; model builds"


class _typed:
    """Whatever a library raises on verified bytes becomes a typed refusal naming the files (see :func:`build`).

    A class rather than a ``contextlib`` generator: it runs twice in every load, and the
    generator machinery costs tens of microseconds each time on a cold cache.
    """

    def __init__(self, p: Progress, doing: str) -> None:
        assert p.codec is not None
        self.p, self.doing = p, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        p = self.p
        if exc is None or isinstance(exc, SafeFlavorError) or not isinstance(exc, Exception):
            return False  # nothing raised, already typed, or KeyboardInterrupt/SystemExit: as is
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None) or str(exc)
            raise MissingDependencyError(
                f"{p.root}: building the model needs the Python package {missing!r}, which is not "
                f"installed in this environment ({type(exc).__name__}: {str(exc)[:200]}). Install it "
                f"(see the model's requirements.txt) and load again.",
                path=str(p.root),
            ) from None
        names = ", ".join(sorted(p.blobs)) or "the payload"
        raise MalformedArtifactError(
            f"{p.root}: {p.codec.name} could not {self.doing} {names} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else 'no message'}). "
            "The files passed their digest and structure checks, so they were written that way: "
            "corrupt or crafted. Do not use them; re-save the model from its source.",
            path=str(p.root),
        ) from None


# The loaders' order; verify/inspect/gate run the same list (see pipeline.py).
STEPS = (
    ("files", files),
    ("signature", signature),
    ("mlmodel", mlmodel),
    ("record", record),
    ("pyfunc", check_pyfunc_conf),
    ("digests", digests),
    ("inspect", inspect),
    ("trust", trust),
    ("validation", build),
)
