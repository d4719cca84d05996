"""scikit-learn: estimators and pipelines with skops, trees as columns, GBDT steps natively.

Tree estimators (forests, boosting, single trees), on their own or anywhere inside the model,
go to ``trees.safetensors`` as checked columns (:mod:`.columnar`); the skeleton left goes to
skops, which is read in one pass: one node tree gives the required types and, once they are
decided, the model (:meth:`SklearnCodec.inspect`).

A Pipeline step that is an XGBoost, LightGBM or CatBoost model is cut out and stored by that
library's codec under ``components/<i>/``; the pipeline skeleton, with ``"passthrough"`` in its
place, goes to skops. Storing the step through skops instead would need the wrapper and Booster
classes trusted and would hand their raw bytes to native code through ``__setstate__``, past our
structural checks.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from mlflow_safeflavor import integrity, policy
from mlflow_safeflavor.codecs import columnar
from mlflow_safeflavor.codecs.base import Inspected, Saved
from mlflow_safeflavor.errors import MalformedArtifactError, MissingDependencyError, UnsupportedModelError, UntrustedTypesError
from mlflow_safeflavor.validate import skops_zip, sklearn_trees

MODEL_FILE = "model.skops"
GBDT_LIBRARIES = ("xgboost", "lightgbm", "catboost")
MAX_COMPONENTS = 64


def _top(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


class SklearnCodec:
    """Stores scikit-learn estimators (pipelines included) as skops zips, never pickle."""

    name = "sklearn"
    classes: dict[str, tuple[str, str]] = {"skops": ("skops.io", "loads")}

    def accepts(self, model: Any) -> bool:
        from sklearn.base import BaseEstimator

        return isinstance(model, BaseEstimator) and _top(model) not in GBDT_LIBRARIES

    def save(self, model: Any, directory: Path, *, prefix: str = "", options: Mapping[str, Any]) -> Saved:
        import skops
        import skops.io as sio
        import sklearn

        from mlflow_safeflavor.codecs import codec_for

        skeleton, found = _cut_gbdt_steps(model)
        components, requirements, versions = [], [], {}
        for index, (step_path, step_model) in enumerate(found):
            codec = codec_for(step_model)
            sub = f"{prefix}components/{index}/"
            (directory / sub).mkdir(parents=True)
            saved = codec.save(step_model, directory, prefix=sub, options=options)
            components.append(
                {"step": list(step_path), "codec": codec.name, "model_class": saved.model_class, "files": list(saved.files)}
            )
            requirements += saved.requirements
            versions.update(saved.library_versions)

        cut = columnar.Cut()
        skeleton = cut.rewrite(skeleton)
        data = sio.dumps(skeleton)
        skops_zip.check(data, path=MODEL_FILE)
        required = set(sio.get_untrusted_types(data=data))
        _check_required_at_save(required, options.get("trusted_types") or ())
        (directory / f"{prefix}{MODEL_FILE}").write_bytes(data)
        files = [f"{prefix}{MODEL_FILE}"] + [f for c in components for f in c["files"]]
        digests: dict[str, str] = {}
        extra: dict[str, Any] = {"components": components} if components else {}
        if cut.slots:
            # Hashed as it is written: a tree file of tens of MB is not read back for its digest.
            with open(directory / f"{prefix}{columnar.FILE}", "wb") as fh:
                writer = integrity.PartsWriter(fh)
                cut.dump(writer)
            if writer.size >= integrity.PARTS_MIN_BYTES:
                digests[f"{prefix}{columnar.FILE}"] = writer.digest()
            files.append(f"{prefix}{columnar.FILE}")
            extra["columnar"] = f"{prefix}{columnar.FILE}"
        versions.update({"scikit-learn": sklearn.__version__, "skops": skops.__version__})
        return Saved(
            files=tuple(files),
            model_class=type(model).__name__ if _top(model) == "sklearn" else "estimator",
            library_versions=versions,
            trusted_types=tuple(sorted(required)),
            requirements=(f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", *requirements),
            extra=extra,
            digests=digests,
        )

    def inspect(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Inspected:
        """Check every payload file once and return the types skops needs and a one-shot ``build``.

        Before anything is built: the components list, the whole tree file (container, layout,
        every array, vectorised) and the skops zip are checked, and skops' node tree is made
        once — its unsafe set is ``required``. ``build(trusted)`` audits that set against
        ``trusted`` (as ``skops.io.loads`` would), constructs the skeleton, validates any trees
        skops built (format 1), puts the columnar trees and native components back.
        """
        from mlflow_safeflavor.codecs import columnar_load

        components = _checked_components(record.get("components", []), blobs, path=path)
        checked = _columns(blobs, record, path=path)
        node = _skops_tree(self._payload(blobs, path), path=path)
        try:
            required = set(node.get_unsafe_set())
        except Exception as exc:  # skops raises ValueError and others on odd node children
            raise _not_skops(exc, path) from None
        state = {"built": False}

        def build(trusted: list[str]) -> Any:
            if state["built"]:
                raise RuntimeError("Inspected.build may be called once")
            state["built"] = True
            missing = sorted(required - set(trusted))
            if missing:
                raise UntrustedTypesError(
                    f"{path}: model.skops needs {', '.join(missing)}, which the caller did not trust. "
                    "Decide trust with the loading policy before building.",
                    path=path, types=missing,
                )
            try:
                model = node.construct()
            except ImportError as exc:  # a trusted type's package is not installed here: not a bad file
                raise _missing_package(exc, required, path) from None
            except Exception as exc:
                raise MalformedArtifactError(
                    f"{path}: skops could not rebuild the model ({type(exc).__name__}: {str(exc)[:200]}). "
                    "Re-save the model.",
                    path=path,
                ) from None
            sklearn_trees.check_estimator(model, path=path)
            columnar_load.attach(model, checked, path=path)
            for comp in components:
                _put_step(model, comp["step"], _load_component(comp, blobs, path=path), path=path)
            return model

        return Inspected(required=required, build=build)

    def required_types(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> set[str]:
        """The types model.skops needs trusted (a wrapper over :meth:`inspect`)."""
        return self.inspect(blobs, record, path=path).required

    def load(self, blobs: Mapping[str, bytes], record: Mapping[str, Any], *, trusted: list[str], path: str) -> Any:
        """Build the model with ``trusted`` types (a wrapper over :meth:`inspect`)."""
        return self.inspect(blobs, record, path=path).build(list(trusted))

    def predict(self, model: Any, method: str, data: Any) -> Any:
        return getattr(model, method)(data)

    @staticmethod
    def _payload(blobs: Mapping[str, bytes], path: str) -> bytes:
        if MODEL_FILE not in blobs:
            raise MalformedArtifactError(f"{path}: model.skops is not among the recorded files.", path=path)
        return blobs[MODEL_FILE]


def _not_skops(exc: Exception, path: str) -> MalformedArtifactError:
    return MalformedArtifactError(
        f"{path}: model.skops is not a valid skops file ({type(exc).__name__}: {str(exc)[:200]}). "
        "Re-save the model.",
        path=path,
    )


def _missing_package(exc: ImportError, required: set[str], path: str) -> MissingDependencyError:
    """Name the package a trusted type needs, the types it provides and the Python that lacks it."""
    import sys

    module = getattr(exc, "name", None) or str(exc)
    types = sorted(t for t in required if t == module or t.startswith(f"{module}."))
    needs = f" for {', '.join(types)}" if types else ""
    return MissingDependencyError(
        f"{path}: the model needs the Python module {module!r}{needs}, which this Python ({sys.executable}) "
        "cannot import. The file is fine: install the package that provides it in the environment that loads "
        "the model (or add its directory to PYTHONPATH), then load again.",
        path=path,
    )


def _skops_tree(data: bytes, *, path: str) -> Any:
    """skops' inert node tree for ``data`` (nothing imported or built), after our zip checks."""
    import skops.io  # noqa: F401 - registers skops' node classes
    from skops.io._audit import get_tree
    from skops.io._utils import LoadContext

    zf, schema = skops_zip.open_checked(data, path=path)
    try:
        return get_tree(schema, LoadContext(src=zf, protocol=schema["protocol"]), trusted=None)
    except Exception as exc:  # skops raises many types on a malformed schema
        raise _not_skops(exc, path) from None


def _columns(blobs: Mapping[str, bytes], record: Mapping[str, Any], *, path: str) -> Any:
    """The checked tree file the record names, or an empty layout when it names none."""
    from mlflow_safeflavor.codecs import columnar_load
    from mlflow_safeflavor.validate.columnar import Checked

    name = record.get("columnar")
    if name is None:
        return Checked({}, [], None, None)
    if name != columnar.FILE or name not in blobs or record.get("format_version", 2) == 1:
        raise MalformedArtifactError(
            f"{path}: safeflavor.columnar must name {columnar.FILE!r}, listed in safeflavor.files, in a "
            f"format-2 record; found {name!r:.80}. The MLmodel file was altered; re-save the model.",
            path=path,
        )
    return columnar_load.read(blobs[name], path=path)


def _load_component(comp: dict, blobs: Mapping[str, bytes], *, path: str) -> Any:
    from mlflow_safeflavor.codecs import get_codec

    codec = get_codec(comp["codec"], path=path)
    return codec.inspect({name: blobs[name] for name in comp["files"]}, comp, path=path).build([])


def _check_required_at_save(required: set[str], declared_by_user: Any) -> None:
    """Refuse at save time what no default loader would load, with the reason and the fix."""
    gbdt = sorted(t for t in required if t.split(".", 1)[0] in GBDT_LIBRARIES)
    if gbdt:
        raise UnsupportedModelError(
            f"This model holds {', '.join(gbdt)} inside a scikit-learn meta-estimator. "
            "mlflow-safeflavor stores XGBoost/LightGBM/CatBoost models natively either on their "
            "own or as steps of a Pipeline; skops would need them trusted and would hand their raw "
            "bytes to native code. Save the boosted model on its own or as a Pipeline step."
        )
    denied = sorted(t for t in required if policy.is_hard_denied(t))
    if denied:
        raise UnsupportedModelError(
            f"This model needs {', '.join(denied)}, which can run code or cannot be imported "
            "elsewhere (e.g. functions and classes defined in __main__ or lambdas). No loader "
            "would accept it. Use importable, plain-data components instead."
        )
    extra = policy.parse_type_list(declared_by_user, source="trusted_types=")
    unknown = sorted(t for t in required if t not in policy.BUILTIN_ALLOWED and t not in extra)
    if unknown:
        raise UnsupportedModelError(
            f"This model needs types that the default loading policy does not trust: "
            f"{', '.join(unknown)}. If they are safe to construct, declare them with "
            f"save_model(..., trusted_types={unknown!r}); every loading side must then allow them "
            "too (trusted_types= or MLFLOW_SAFEFLAVOR_TRUSTED_TYPES)."
        )


def _cut_gbdt_steps(model: Any, prefix: tuple[int, ...] = ()) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    """Return a copy of ``model`` with GBDT Pipeline steps replaced by "passthrough", and the steps.

    The caller's object is never modified: pipelines on the path are shallow-copied.
    """
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        return model, []
    found: list[tuple[tuple[int, ...], Any]] = []
    new_steps = []
    for i, (name, step) in enumerate(model.steps):
        if _top(step) in GBDT_LIBRARIES:
            found.append((prefix + (i,), step))
            new_steps.append((name, "passthrough"))
        else:
            sub, sub_found = _cut_gbdt_steps(step, prefix + (i,))
            found += sub_found
            new_steps.append((name, sub))
    if not found:
        return model, []
    clone = copy.copy(model)
    clone.steps = new_steps
    return clone, found


def _checked_components(components: Any, blobs: Mapping[str, bytes], *, path: str) -> list[dict]:
    """Validate the ``components`` list from MLmodel before anything is built from it."""
    from mlflow_safeflavor.codecs import CODEC_MODULES

    if not isinstance(components, list) or len(components) > MAX_COMPONENTS:
        raise MalformedArtifactError(f"{path}: 'components' in MLmodel is not a short list.", path=path)
    out = []
    for comp in components:
        ok = (
            isinstance(comp, dict)
            and comp.get("codec") in CODEC_MODULES
            and comp.get("codec") != "sklearn"
            and isinstance(comp.get("step"), list)
            and 0 < len(comp["step"]) <= 8
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1000 for i in comp["step"])
            and isinstance(comp.get("files"), list)
            and all(isinstance(f, str) and f in blobs for f in comp["files"])
        )
        if not ok:
            raise MalformedArtifactError(
                f"{path}: a pipeline component in MLmodel is malformed ({comp!r:.200}). Re-save the model.",
                path=path,
            )
        out.append(comp)
    return out


def _put_step(model: Any, step_path: list[int], step_model: Any, *, path: str) -> None:
    """Put a natively loaded model back where the skeleton holds its "passthrough" placeholder."""
    from sklearn.pipeline import Pipeline

    parent = model
    for depth, index in enumerate(step_path):
        if not isinstance(parent, Pipeline) or index >= len(parent.steps):
            break
        name, step = parent.steps[index]
        if depth == len(step_path) - 1:
            if step != "passthrough":
                break
            parent.steps[index] = (name, step_model)
            return
        parent = step
    raise MalformedArtifactError(
        f"{path}: pipeline component at step {step_path} does not match the stored pipeline. "
        "Re-save the model.",
        path=path,
    )


CODEC = SklearnCodec()
