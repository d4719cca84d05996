"""The MLflow compat module against the real MLflow of each CI leg (3.17 in ``make test``, 3.18 in
``make test-mlflow-next``), and a guard that keeps MLflow's private names inside that one module.

Each adapter is called on the installed MLflow and its result checked against what MLflow itself
does (an alias the registry refuses, a URI MLflow parses, a prompt MLflow registers), so a release
that moves or changes one of them fails here, by name, instead of inside ``promote`` or the gate.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from mlflow_safeflavor import _mlflow_compat as compat
from mlflow_safeflavor.errors import SafeFlavorError

PACKAGE = Path(compat.__file__).resolve().parent
NEW_SWITCH = compat.mlflow_version() >= (3, 18)


# ----------------------------------------------------------------------- the guard on the package


def _private_mlflow_uses(path: Path) -> list[str]:
    """``file:line: what`` for every import of, or ``mlflow.``-rooted access to, a private MLflow name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def private(dotted: str) -> bool:
        return any(part.startswith("_") for part in dotted.split("."))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mlflow":
            names = [a.name for a in node.names]
            if private(node.module) or any(n.startswith("_") for n in names):
                found.append(f"{path.name}:{node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "mlflow" and private(a.name)]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            parts = [node.attr]
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "mlflow":
                found.append(f"{path.name}:{node.lineno}: mlflow.{'.'.join(reversed(parts))}")
    return found


def test_no_module_but_the_compat_module_uses_private_mlflow_names():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "_mlflow_compat.py":
            offenders += [f"{path.relative_to(PACKAGE.parent)}{hit[len(path.name):]}" for hit in _private_mlflow_uses(path)]
    assert not offenders, (
        "private MLflow names outside mlflow_safeflavor/_mlflow_compat.py (use MLflow's public API, or "
        "add one adapter there with a test here):\n" + "\n".join(offenders)
    )


def test_the_guard_sees_each_kind_of_private_use(tmp_path):
    src = tmp_path / "sample.py"
    src.write_text(
        "from mlflow.utils.validation import _validate_alias_name\n"
        "from mlflow.utils._spark_utils import Thing\n"
        "import mlflow.tracking._model_registry\n"
        "import mlflow\n"
        "x = mlflow.tracking.fluent._get_experiment_id()\n"
        "from mlflow.models import Model\n"
        "from mlflow_safeflavor._version import __version__\n"
    )
    hits = _private_mlflow_uses(src)
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "5"], hits


# ------------------------------------------------------------------------------------ adapters


def test_unknown_internal_is_a_typed_error_naming_it_and_the_supported_range():
    with pytest.raises(compat.UnsupportedMlflowError) as info:
        compat._first("mlflow.utils.validation", "_no_such_validator", "_nor_this_one")
    assert isinstance(info.value, SafeFlavorError)
    msg = str(info.value)
    assert "mlflow.utils.validation._no_such_validator" in msg and compat.SUPPORTED in msg and "pip install" in msg


def test_alias_validator_is_the_one_this_release_defines():
    import mlflow.utils.validation as v

    expected = "_validate_alias_name" if NEW_SWITCH else "_validate_model_alias_name"
    assert compat._first("mlflow.utils.validation", "_validate_alias_name", "_validate_model_alias_name") is getattr(v, expected)


@pytest.mark.parametrize("alias", ["champion", "prod-2", "a_b", "Latest1"])
def test_validate_alias_accepts_what_the_registry_accepts(alias):
    compat.validate_alias(alias)


@pytest.mark.parametrize("alias, needle", [
    ("latest", "reserved"), ("LATEST", "reserved"), ("v3", "reserved"), ("bad alias!", "Invalid alias"),
    ("", "empty"), ("a" * 300, "exceeds"),
])
def test_validate_alias_refuses_with_mlflows_message(alias, needle):
    with pytest.raises(MlflowException) as info:
        compat.validate_alias(alias)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert needle in info.value.message


def test_validate_alias_agrees_with_a_real_registry(tmp_path):
    """The refusals above are the registry's own: a sqlite registry refuses and accepts the same aliases."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path))
    for alias in ("latest", "v3", "bad alias!", "champion"):
        try:
            compat.validate_alias(alias)
            ours = None
        except MlflowException as exc:
            ours = exc.message
        try:
            client.set_registered_model_alias("m", alias, "1")
            theirs = None
        except MlflowException as exc:
            theirs = exc.message
        assert (ours is None) == (theirs is None), (alias, ours, theirs)


def test_parse_model_uri():
    by_alias = compat.parse_model_uri("models:/fraud@champion")
    assert (by_alias.name, by_alias.alias, by_alias.version) == ("fraud", "champion", None)
    by_version = compat.parse_model_uri("models:/fraud/3")
    assert (by_version.name, by_version.version) == ("fraud", "3")
    logged = compat.parse_model_uri("models:/m-0123456789abcdef0123456789abcdef")
    assert logged.model_id == "m-0123456789abcdef0123456789abcdef" and logged.name is None
    with pytest.raises(MlflowException):
        compat.parse_model_uri("models:/")


def test_prompts_registry_uri_and_active_experiment_on_a_real_store(tmp_path, monkeypatch):
    """A prompt MLflow registers has a placeholder source and is_prompt; a model does not."""
    import mlflow
    from mlflow import MlflowClient

    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{tmp_path / 'p.db'}"
    # set_tracking_uri, not the environment: an earlier test's set_tracking_uri would win over it.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert compat.client_registry_uri(client) == uri
    mlflow.genai.register_prompt(name="greeting", template="Hello {{name}}")
    # The client hides prompts from its model calls; the store (what the gate reads) does not.
    store = client._get_registry_client().store
    assert store.get_model_version_download_uri("greeting", "1") in compat.prompt_source_placeholders()
    assert compat.is_prompt(store.get_registered_model("greeting"))
    client.create_registered_model("plain")
    assert not compat.is_prompt(store.get_registered_model("plain"))
    from mlflow.tracking import fluent

    # set_experiment's global and environment variable, both restored after the test.
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded, so the value set_experiment writes is undone
    experiment_id = mlflow.set_experiment("compat-check").experiment_id
    assert compat.active_experiment_id() == experiment_id


def test_default_await_registration_is_mlflows_default():
    from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS

    assert compat.default_await_registration_for() == DEFAULT_AWAIT_MAX_SLEEP_SECONDS


def test_save_example_and_signature_inference(tmp_path, cases):
    from mlflow.models import Model

    from mlflow_safeflavor.codecs import codec_for
    from mlflow_safeflavor.flavor import SafeFlavorPyfunc

    case = cases["sk_pipeline_ct_lr"]
    model = Model()
    saved = compat.save_example(model, case.X[:3], str(tmp_path))
    assert saved is not None and (tmp_path / "input_example.json").is_file()
    signature = compat.infer_signature_from_input_example(saved, SafeFlavorPyfunc(case.model, codec_for(case.model), "predict"))
    assert signature.inputs.input_names() == list(case.X.columns)


def test_environment_files_as_mlflow_writes_them(tmp_path):
    import numpy

    pinned = f"numpy=={numpy.__version__}"
    compat.write_environment_files(str(tmp_path), [pinned], extra_pip_requirements=["pyyaml"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conda.yaml", "python_env.yaml", "requirements.txt"]
    assert {pinned, "pyyaml"} <= set((tmp_path / "requirements.txt").read_text().splitlines())
    with pytest.raises(ValueError, match="Only one of"):  # MLflow's own refusal; envfiles types it
        compat.validate_env_arguments({"dependencies": []}, ["numpy"], None)


def test_pyfunc_implementation_is_our_wrapper(tmp_path, cases):
    import mlflow_safeflavor
    from mlflow_safeflavor.flavor import SafeFlavorPyfunc

    mlflow_safeflavor.save_model(cases["xgb_clf"].model, tmp_path / "m")
    assert isinstance(compat.pyfunc_implementation(mlflow_safeflavor.load_pyfunc(str(tmp_path / "m"))), SafeFlavorPyfunc)


def test_spark_directory_distributor_has_what_spark_udf_calls():
    distributor = compat.spark_directory_distributor()
    assert callable(distributor.add_dir) and callable(distributor.get_or_extract)


def test_server_interface_reads_what_mlflow_server_sets(monkeypatch):
    monkeypatch.delenv("_MLFLOW_SGI_NAME", raising=False)
    assert compat.server_interface() in (None, "uvicorn")  # MLflow's default when unset
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "gunicorn")
    assert compat.server_interface() == "gunicorn"


def test_parse_request_message_reads_an_alias_request_as_the_handler_does():
    from mlflow.protos.model_registry_pb2 import SetRegisteredModelAlias
    from mlflow.server import app

    body = {"name": "fraud", "alias": "champion", "version": "3"}
    with app.test_request_context("/api/2.0/mlflow/registered-models/alias", method="POST", json=body):
        message = compat.parse_request_message(SetRegisteredModelAlias())
    assert (message.name, message.alias, message.version) == ("fraud", "champion", "3")


def test_code_execution_variable_is_this_releases_switch():
    expected = "MLFLOW_ALLOW_MODEL_CODE_EXECUTION" if NEW_SWITCH else "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    assert compat.code_execution_variable() == expected
