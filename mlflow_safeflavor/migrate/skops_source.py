"""skops sources (MLflow's sklearn and lightgbm flavors write skops by default): judged, checked, rebuilt.

MLflow 3.17 stores ``mlflow.lightgbm.log_model(LGBMClassifier)`` and ``mlflow.sklearn`` models as
skops. The types such a file needs are judged by the *converter's* allowlist
(:mod:`mlflow_safeflavor.migrate.allow`) — the loader's policy plus the model classes our codecs
store natively — never by the ``skops_trusted_types`` the MLmodel claims. skops rebuilds a LightGBM
``Booster`` by calling ``Booster.__setstate__`` with the model text, which LightGBM's C++ parser
reads without checks; so every Booster in the file is found in skops' own node tree (the tree that
is then constructed, memoised references included) and its text is validated first, as the
restricted unpickler does for pickled Boosters. Conversion still runs in the isolated child.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from mlflow_safeflavor.errors import MalformedArtifactError, UntrustedTypesError
from mlflow_safeflavor.migrate.allow import PICKLE_CONSTRUCTORS, Verdict, pickle_policy
from mlflow_safeflavor.migrate.scanreport import ScanReport

BOOSTER = ("lightgbm.basic", "Booster")
_BOOSTER_TEXT_KEYS = ("_handle", "handle")  # what Booster.__setstate__ reads the model text from
# Pickle constructors are for pickle streams; in a skops file only these containers are expected.
_SKOPS_CONTAINERS = {"collections.OrderedDict", "collections.defaultdict"}


def judge_types(needed: Iterable[str], trusted_types: Any = None) -> list[Verdict]:
    """The converter's verdict on each type a skops file needs (imports nothing)."""
    judge = pickle_policy(trusted_types)
    out = []
    for name in sorted(set(needed)):
        if name in PICKLE_CONSTRUCTORS and name not in _SKOPS_CONTAINERS:
            out.append(Verdict(name, False, "a pickle-stream constructor; skops files written by MLflow never need it"))
        else:
            out.append(judge.judge(name))
    return out


def _nodes(root: Any) -> Iterator[Any]:
    """Every node of skops' tree once (memoised nodes are shared), iteratively."""
    from skops.io._audit import Node

    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, Node) and id(node) not in seen:
            seen.add(id(node))
            yield node
            stack.extend((getattr(node, "children", None) or {}).values())


def booster_texts(tree: Any, *, label: str) -> list[str]:
    """The model text of every LightGBM Booster skops would rebuild from ``tree``, checked for shape.

    A LightGBM class may only appear as a plain object (state set by ``__setstate__``) or as a
    type; a Booster's state must be a string-keyed dict whose model text is a JSON string. Anything
    else is refused: it would reach LightGBM's native code along a path this check does not read.
    """
    texts = []
    for node in _nodes(tree):
        module, cls, kind = getattr(node, "module_name", ""), getattr(node, "class_name", ""), type(node).__name__
        if not str(module).startswith("lightgbm") or kind == "TypeNode":
            continue
        if kind != "ObjectNode":
            raise _refuse(label, f"{module}.{cls} is stored as a skops {kind}, which would call LightGBM code with "
                                 "arguments from the file; MLflow writes LightGBM objects as plain object state")
        if (module, cls) != BOOSTER:
            continue
        state = node.attrs
        if state is None:
            continue
        if type(state).__name__ != "DictNode" or not _str_keys(state):
            raise _refuse(label, "a LightGBM Booster's state is not a plain string-keyed dict")
        for key in _BOOSTER_TEXT_KEYS:
            value = state.content.get(key)
            if value is None:
                continue
            text = json.loads(value.content) if type(value).__name__ == "JsonNode" else None
            if not isinstance(text, str):
                raise _refuse(label, f"a LightGBM Booster's {key!r} is not the model text as a string")
            texts.append(text)
    return texts


def _str_keys(state: Any) -> bool:
    keys = getattr(state.key_types, "content", None)
    return isinstance(keys, list) and all(
        type(k).__name__ == "TypeNode" and (k.module_name, k.class_name) == ("builtins", "str") for k in keys
    )


def _refuse(label: str, problem: str) -> MalformedArtifactError:
    return MalformedArtifactError(f"{label}: {problem}. Refused before anything was built; re-export the model "
                                  "from its training code.", path=label)


def _tree(data: bytes, label: str) -> Any:
    from mlflow_safeflavor.codecs.sklearn import _skops_tree

    return _skops_tree(data, path=label)


def load(data: bytes, trusted_types: Any, label: str) -> Any:
    """Rebuild a skops source after the converter's allowlist and the LightGBM text checks pass.

    Raises UntrustedTypesError naming each refused type and why, MalformedArtifactError for a
    container or Booster text the checks refuse; nothing is constructed before both pass.
    """
    import skops.io  # noqa: F401 - registers skops' node classes
    from skops.io._audit import audit_tree

    from mlflow_safeflavor.validate import lightgbm_model

    tree = _tree(data, label)
    verdicts = judge_types(tree.get_unsafe_set(), trusted_types)
    refused = [v for v in verdicts if not v.allowed]
    if refused:
        raise UntrustedTypesError(
            f"{label}: the skops file needs types the converter does not allow: "
            + "; ".join(f"{v.name} ({v.reason})" for v in refused)
            + ". Nothing was built.",
            types=[v.name for v in refused],
        )
    for text in booster_texts(tree, label=label):
        lightgbm_model.validate(text, path=f"{label} (LightGBM Booster model text)")
    audit_tree(tree, trusted=[v.name for v in verdicts])
    return tree.construct()


def scan(data: bytes, *, label: str, container: str, trusted_types: Any = None) -> ScanReport:
    """What converting a skops source would allow, refuse and check — without building anything."""
    from mlflow_safeflavor.validate import lightgbm_model

    report = ScanReport(source=label, container=f"{container} (skops: types judged by the converter's allowlist)",
                        size=len(data))
    try:
        tree = _tree(data, label)
        for v in judge_types(tree.get_unsafe_set(), trusted_types):
            report.note(v.name, v.allowed, v.reason, "skops")
        texts = booster_texts(tree, label=label)
        for text in texts:
            lightgbm_model.validate(text, path=f"{label} (LightGBM Booster model text)")
        if texts:
            report.note("lightgbm.basic.Booster model text", True,
                        f"{len(texts)} model text(s) pass the LightGBM structure check", "skops")
    except MalformedArtifactError as exc:
        report.problem(exc.message)
    return report
