"""What a pickle may import during migration: the loader's allowed set plus named constructors.

The set is the one the loader uses (skops' default trusted types, our built-in allowlist, the
operator's ``trusted_types`` additions, minus the hard-deny list) plus the model classes our codecs
store natively, plus :data:`PICKLE_CONSTRUCTORS` — the few functions numpy and scikit-learn pickles
need to rebuild arrays, dtypes, random states and Cython objects. Nothing is allowed because it is
*not* on a denylist; a name is allowed only because one of these lists names it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

from mlflow_safeflavor.policy import HARD_DENY_MODULES, SAFE_BUILTINS, Policy, is_hard_denied, loading_policy

# Each entry says why a pickle needs it and why calling it cannot run code of the pickle's choosing.
_NUMPY_CORE = ("numpy._core", "numpy.core")
PICKLE_CONSTRUCTORS: dict[str, str] = {
    **{f"{m}.multiarray._reconstruct": "numpy array pickles (protocol < 5): allocates an empty array" for m in _NUMPY_CORE},
    **{f"{m}.multiarray.scalar": "numpy scalar pickles: builds a scalar from a dtype and raw bytes" for m in _NUMPY_CORE},
    **{f"{m}.numeric._frombuffer": "numpy array pickles (protocol 5): wraps raw bytes as an array" for m in _NUMPY_CORE},
    "numpy.ndarray": "numpy array pickles: the array type itself",
    "numpy.dtype": "numpy dtype pickles: parses a dtype description",
    "numpy.random._pickle.__randomstate_ctor": "fitted random_state: builds a RandomState",
    "numpy.random._pickle.__generator_ctor": "fitted random_state: builds a Generator",
    "numpy.random._pickle.__bit_generator_ctor": "fitted random_state: builds a bit generator by name from numpy's own table",
    "numpy.random.mtrand.RandomState": "fitted random_state",
    "numpy.random._mt19937.MT19937": "fitted random_state: bit generator",
    "numpy.random._pcg64.PCG64": "fitted random_state: bit generator",
    "numpy.random._pcg64.PCG64DXSM": "fitted random_state: bit generator",
    "numpy.random._philox.Philox": "fitted random_state: bit generator",
    "numpy.random._sfc64.SFC64": "fitted random_state: bit generator",
    "numpy.random.bit_generator.SeedSequence": "fitted random_state: seed sequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": "fitted random_state: Cython state restore of SeedSequence",
    "_codecs.encode": "protocol 2 pickles bytes as codecs.encode(text, 'latin1'); only 'latin1' is accepted",
    "collections.OrderedDict": "LightGBM and scikit-learn keep ordered parameter dicts",
    "collections.defaultdict": "LightGBM keeps evaluation results in defaultdicts (the factory must itself be allowed)",
    "sklearn.metrics._dist_metrics.newObj": "Cython __new__ helper for distance metrics (the class must itself be allowed)",
    "sklearn.neighbors._kd_tree.newObj": "Cython __new__ helper for KDTree (the class must itself be allowed)",
    "sklearn.neighbors._ball_tree.newObj": "Cython __new__ helper for BallTree (the class must itself be allowed)",
    **{
        f"sklearn._loss._loss.{name}": "scikit-learn loss (Cython, numeric parameters only)"
        for name in (
            "CyHalfSquaredError", "CyAbsoluteError", "CyPinballLoss", "CyHuberLoss",
            "CyHalfPoissonLoss", "CyHalfGammaLoss", "CyHalfTweedieLoss", "CyHalfTweedieLossIdentity",
            "CyHalfBinomialLoss", "CyExponentialLoss", "CyHalfMultinomialLoss",
        )
    },
}

# The model classes the GBDT codecs store natively, under the module names pickles use.
NATIVE_MODEL_CLASSES: dict[str, str] = {
    "xgboost.core.Booster": "xgboost",
    **{f"xgboost.sklearn.{c}": "xgboost" for c in ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")},
    "lightgbm.basic.Booster": "lightgbm",
    **{f"lightgbm.sklearn.{c}": "lightgbm" for c in ("LGBMClassifier", "LGBMRegressor", "LGBMRanker")},
    **{f"catboost.core.{c}": "catboost" for c in ("CatBoost", "CatBoostClassifier", "CatBoostRegressor", "CatBoostRanker")},
}

# joblib writes arrays as this wrapper followed by raw bytes; our unpickler reads those bytes itself.
JOBLIB_ARRAY_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


@functools.lru_cache(maxsize=1)
def skops_default_trusted() -> frozenset[str]:
    """Return the type names skops trusts by default (what the loader trusts without a claim).

    skops keeps these lists in a private module; the versions we support (0.13–0.16) all have it.
    """
    from skops.io import _trusted_types as tt

    names: set[str] = set()
    for attr in dir(tt):
        if attr.endswith("_TYPE_NAMES"):
            names.update(n for n in getattr(tt, attr) if isinstance(n, str))
    return frozenset(names)


@dataclass(frozen=True)
class Verdict:
    """One import's verdict: allowed or not, and the reason a person can read."""

    name: str
    allowed: bool
    reason: str


@dataclass(frozen=True)
class PicklePolicy:
    """The migration allowlist for one call: the loader's policy plus the pickle-only names."""

    policy: Policy

    def judge(self, name: str) -> Verdict:
        """Decide one ``module.qualname`` a pickle imports; never imports anything itself."""
        if name == JOBLIB_ARRAY_WRAPPER:
            return Verdict(name, True, "joblib array wrapper: read as plain array bytes by our own reader")
        if is_hard_denied(name) and name not in PICKLE_CONSTRUCTORS:
            module = next((m for m in HARD_DENY_MODULES if name == m or name.startswith(m + ".")), None)
            why = (
                f"module {module!r} is on the hard-deny list (code execution, files, network or "
                "another deserializer); nothing re-allows it"
                if module
                else "builtins other than plain value types (eval, exec, getattr, open, ...) are never allowed"
                if name.startswith("builtins.")
                else "not a plain dotted name"
            )
            return Verdict(name, False, why)
        if name in SAFE_BUILTINS:
            return Verdict(name, True, "plain Python value type")
        if name in PICKLE_CONSTRUCTORS:
            return Verdict(name, True, PICKLE_CONSTRUCTORS[name])
        if name in NATIVE_MODEL_CLASSES:
            return Verdict(name, True, f"model class the {NATIVE_MODEL_CLASSES[name]} codec stores natively")
        if name in self.policy.added:
            return Verdict(name, True, f"allowed by the loading policy ({self.policy.added[name]})")
        if self.policy.allows(name):
            return Verdict(name, True, "on the loader's built-in allowlist")
        if name in skops_default_trusted():
            return Verdict(name, True, "trusted by skops by default (the loader's base set)")
        return Verdict(
            name,
            False,
            "not on the allowlist the loader uses; if you trust it, pass trusted_types="
            f"[{name!r}] (or add it to MLFLOW_SAFEFLAVOR_TRUSTED_TYPES)",
        )


def pickle_policy(trusted_types: str | Iterable[str] | None = None) -> PicklePolicy:
    """Build the migration allowlist from this process's loading policy and ``trusted_types``."""
    return PicklePolicy(loading_policy(trusted_types))
