"""The loading side's trust policy: what may be trusted, whatever an artifact claims.

Three sets meet here (DESIGN §2): *required* (what the payload needs, computed from its bytes),
*declared* (the ``trusted_types`` claim in MLmodel) and *allowed* (this module: a built-in
allowlist plus operator additions, minus a hard-deny list nothing can re-allow). A model loads only
if ``required ⊆ declared ⊆ allowed``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable

from mlflow_safeflavor.errors import InvalidArgumentError, UntrustedTypesError

ENV_TRUSTED_TYPES = "MLFLOW_SAFEFLAVOR_TRUSTED_TYPES"

# Types scikit-learn models need beyond skops' own defaults (skops >= 0.16 stopped trusting the
# tree internals). They only hold numeric arrays; their structure is validated after construction.
BUILTIN_ALLOWED: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        *(
            f"sklearn.metrics._dist_metrics.{name}{bits}"
            for name in (
                "EuclideanDistance",
                "SEuclideanDistance",
                "ManhattanDistance",
                "ChebyshevDistance",
                "MinkowskiDistance",
                "MahalanobisDistance",
                "HammingDistance",
                "CanberraDistance",
                "BrayCurtisDistance",
                "JaccardDistance",
                "MatchingDistance",
                "DiceDistance",
                "KulsinskiDistance",
                "RogersTanimotoDistance",
                "RussellRaoDistance",
                "SokalMichenerDistance",
                "SokalSneathDistance",
                "HaversineDistance",
            )
            for bits in ("64", "32")
        ),
    }
)

# Modules whose members reach code execution, the file system, the network or another
# deserializer. A type in or under one of these is refused whoever allows it.
HARD_DENY_MODULES: tuple[str, ...] = (
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "importlib", "pickle",
    "_pickle", "pickletools", "copyreg", "marshal", "shelve", "dill", "cloudpickle", "joblib",
    "operator", "_operator", "functools", "_functools", "itertools", "runpy", "ctypes", "_ctypes",
    "cffi", "code", "codeop", "pdb", "bdb", "timeit", "pydoc", "webbrowser", "shutil", "socket",
    "_socket", "ssl", "http", "urllib", "ftplib", "smtplib", "pty", "tty", "signal", "threading",
    "_thread", "multiprocessing", "concurrent", "asyncio", "types", "inspect", "gc", "weakref",
    "ast", "compile", "tempfile", "glob", "pathlib", "io", "_io", "zipimport", "pkgutil",
    "site", "sysconfig", "platform", "distutils", "setuptools", "pip", "venv", "ensurepip",
    "numpy.testing", "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio",
    "numpy.load", "numpy.save", "numpy.fromfile", "numpy.memmap", "skops", "mlflow",
    "mlflow_safeflavor", "__main__", "__builtin__",
)

# ``builtins`` holds both harmless value types and eval/exec/open/getattr: only these pass.
SAFE_BUILTINS: frozenset[str] = frozenset(
    f"builtins.{n}"
    for n in (
        "int", "float", "complex", "bool", "str", "bytes", "bytearray", "list", "tuple", "dict",
        "set", "frozenset", "slice", "range", "NoneType", "Ellipsis",
    )
)

_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def is_hard_denied(name: str) -> bool:
    """Return True if ``name`` (``module.qualname``) is on the hard-deny list.

    Names that are not plain dotted identifiers are denied too: nothing legitimate needs them.
    """
    if not isinstance(name, str) or not _TYPE_NAME.match(name):
        return True
    if name.startswith("builtins."):
        return name not in SAFE_BUILTINS
    return any(name == m or name.startswith(m + ".") for m in HARD_DENY_MODULES)


def parse_type_list(value: str | Iterable[str] | None, *, source: str) -> list[str]:
    """Turn a comma-separated string or an iterable of names into a clean list of type names.

    Raises InvalidArgumentError naming ``source`` when an entry is not a string.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgumentError(
                f"{source}: trusted type names must be strings like 'sklearn.tree._tree.Tree', "
                f"got {type(item).__name__}."
            )
        item = item.strip()
        if item:
            out.append(item)
    return out


@dataclass(frozen=True)
class Policy:
    """The loading side's allowed set, with where each operator-added name came from."""

    allowed: frozenset[str]
    added: dict[str, str] = field(default_factory=dict)
    refused_additions: dict[str, str] = field(default_factory=dict)

    def allows(self, name: str) -> bool:
        """Return True if ``name`` may be trusted under this policy."""
        return name in self.allowed and not is_hard_denied(name)


def loading_policy(trusted_types: str | Iterable[str] | None = None) -> Policy:
    """Build the policy of this process: built-ins, the call's additions and the environment's.

    Additions on the hard-deny list are dropped (and remembered, so an error can say why they did
    not help); nothing read from a model artifact ever reaches this function.
    """
    added: dict[str, str] = {}
    refused: dict[str, str] = {}
    sources = [
        (parse_type_list(os.environ.get(ENV_TRUSTED_TYPES), source=ENV_TRUSTED_TYPES), ENV_TRUSTED_TYPES),
        (parse_type_list(trusted_types, source="trusted_types="), "trusted_types="),
    ]
    for names, source in sources:
        for name in names:
            (refused if is_hard_denied(name) else added)[name] = source
    return Policy(allowed=BUILTIN_ALLOWED | frozenset(added), added=added, refused_additions=refused)


@dataclass(frozen=True)
class TrustDecision:
    """The outcome of checking required ⊆ declared ⊆ allowed."""

    required: tuple[str, ...]
    declared: tuple[str, ...]
    undeclared: tuple[str, ...]  # needed by the payload but not claimed in MLmodel
    not_allowed: tuple[str, ...]  # claimed (or needed) but outside the loading policy
    denied: tuple[str, ...]  # on the hard-deny list

    @property
    def ok(self) -> bool:
        """True when the model may be loaded."""
        return not (self.undeclared or self.not_allowed or self.denied)

    def explain(self) -> str:
        """A one-paragraph reason for a refusal, with the line that would allow it (if any can)."""
        if self.ok:
            return "allowed: every required type is declared and allowed by the loading policy"
        parts = []
        if self.denied:
            parts.append(
                "on the hard-deny list, which no setting re-allows: " + ", ".join(self.denied)
            )
        if self.undeclared:
            parts.append(
                "needed by the payload but not declared in MLmodel (the artifact was altered or "
                "not written by mlflow_safeflavor.save_model; re-save it): "
                + ", ".join(self.undeclared)
            )
        fixable = [t for t in self.not_allowed if t not in self.denied]
        if fixable:
            joined = ",".join(fixable)
            parts.append(
                "not allowed by the loading policy: "
                + ", ".join(fixable)
                + f". If you trust them, allow them on the loading side with "
                f"`export {ENV_TRUSTED_TYPES}={joined}` or "
                f"`load_model(uri, trusted_types={list(fixable)!r})`"
            )
        return "; ".join(parts)


def decide(required: Iterable[str], declared: Iterable[str], policy: Policy) -> TrustDecision:
    """Check ``required ⊆ declared ⊆ allowed`` and return the full decision (never raises)."""
    req = tuple(sorted(set(required)))
    dec = tuple(sorted(set(declared)))
    claimed = set(req) | set(dec)
    return TrustDecision(
        required=req,
        declared=dec,
        undeclared=tuple(sorted(set(req) - set(dec))),
        not_allowed=tuple(sorted(t for t in claimed if not policy.allows(t))),
        denied=tuple(sorted(t for t in claimed if is_hard_denied(t))),
    )


def enforce(decision: TrustDecision, *, path: str) -> None:
    """Raise UntrustedTypesError for a refused decision, naming the artifact at ``path``."""
    if not decision.ok:
        bad = sorted(set(decision.undeclared) | set(decision.not_allowed) | set(decision.denied))
        raise UntrustedTypesError(
            f"Refusing to load {path}: untrusted types — {decision.explain()}.",
            types=bad,
            path=path,
        )
