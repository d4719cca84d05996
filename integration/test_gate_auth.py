"""``mlflow server --app-name safeflavor-gate-auth``: MLflow's basic-auth and the promotion gate in one app.

A real server with MLflow's authentication (its own user database, ``MLFLOW_AUTH_CONFIG_PATH``,
``default_permission = NO_PERMISSIONS``) and the gate behind it. The admin registers a safe-flavor
version and a pickled one; ``mallory`` has no permission on the model, ``alice`` may manage it.
Authentication answers first (an unauthorised or anonymous alias write never reaches the gate);
the gate then judges what authentication let through (an authorised user cannot promote an
unverified version), and an authorised user promotes a verified one.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import mlflow
import numpy as np
import pytest
from conftest import MlflowServer, _stop, start_mlflow_server, wait_healthy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LogisticRegression

import mlflow_safeflavor
from mlflow_safeflavor.registry import promote

ADMIN, ADMIN_PASSWORD = "admin", "admin-" + uuid.uuid4().hex
USERS = {"alice": "alice-" + uuid.uuid4().hex, "mallory": "mallory-" + uuid.uuid4().hex}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("gate-auth-server")
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = start_mlflow_server(root, app_name="safeflavor-gate-auth", extra_env={
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_SAFEFLAVOR_PROTECTED_ALIASES": "champion,production",
    })
    try:
        yield wait_healthy(server)
    finally:
        _stop(server.proc)


@contextmanager
def as_user(url: str, user: str | None) -> Iterator[MlflowClient]:
    """Talk to ``url`` as ``user`` (None: no credentials); restores this process's MLflow settings."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")}
    previous_uri = mlflow.get_tracking_uri()
    password = ADMIN_PASSWORD if user == ADMIN else USERS.get(user or "")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(key, None)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    try:
        yield MlflowClient(tracking_uri=url)
    finally:
        mlflow.set_tracking_uri(previous_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def versions(auth_server) -> dict[str, str]:
    """As admin: users, a model with a safe-flavor v1 and a pickled v2, and alice's MANAGE grant."""
    name = f"gated-{uuid.uuid4().hex[:6]}"
    X = np.random.default_rng(0).standard_normal((60, 4))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    with as_user(auth_server.url, ADMIN) as client:
        from mlflow.server import get_app_client

        auth = get_app_client("basic-auth", tracking_uri=auth_server.url)
        for user, password in USERS.items():
            auth.create_user(user, password)
        exp = client.create_experiment(f"exp-{name}")
        with mlflow.start_run(experiment_id=exp):
            mlflow_safeflavor.log_model(model, name="m", input_example=X[:3], registered_model_name=name)
        with mlflow.start_run(experiment_id=exp):
            mlflow.sklearn.log_model(model, name="m", serialization_format="pickle", registered_model_name=name,
                                     pip_requirements=["scikit-learn"])
        auth.grant_user_permission("alice", "registered_model", name, "MANAGE")
        auth.grant_user_permission("alice", "experiment", exp, "EDIT")
    return {"name": name}


def _aliases(url: str, name: str) -> dict[str, str]:
    with as_user(url, ADMIN) as client:
        return dict(client.get_registered_model(name).aliases)


def _gate_lines(server: MlflowServer) -> int:
    return server.log.read_text(errors="replace").count("safeflavor-gate: refused @champion")


def test_anonymous_and_unauthorised_users_are_refused_by_authentication_before_the_gate(auth_server, versions):
    name = versions["name"]
    before = _gate_lines(auth_server)
    with as_user(auth_server.url, None) as client, pytest.raises(MlflowException) as anon:
        client.set_registered_model_alias(name, "champion", "2")
    assert anon.value.get_http_status_code() == 401
    with as_user(auth_server.url, "mallory") as client, pytest.raises(MlflowException) as denied:
        client.set_registered_model_alias(name, "champion", "2")
    assert denied.value.get_http_status_code() == 403 and "safeflavor" not in denied.value.message
    with as_user(auth_server.url, "mallory"), pytest.raises(Exception):
        promote(name, "1", "champion")
    assert "champion" not in _aliases(auth_server.url, name)
    assert _gate_lines(auth_server) == before  # authentication answered; the gate did no work


def test_an_authorised_user_cannot_set_a_protected_alias_on_an_unverified_version(auth_server, versions):
    name = versions["name"]
    before = _gate_lines(auth_server)
    with as_user(auth_server.url, "alice") as client:
        for version in ("2", "1"):  # a pickle; a safe model nobody verified (no safeflavor.verified tag)
            with pytest.raises(MlflowException) as refused:
                client.set_registered_model_alias(name, "champion", version)
            assert refused.value.get_http_status_code() == 403
            assert "safeflavor" in refused.value.message and "protected alias" in refused.value.message
        client.set_registered_model_alias(name, "candidate", "2")  # unprotected aliases pass the gate
    aliases = _aliases(auth_server.url, name)
    assert "champion" not in aliases and aliases["candidate"] == "2"
    assert _gate_lines(auth_server) >= before + 2


def test_an_authorised_user_promotes_a_verified_version(auth_server, versions):
    name = versions["name"]
    with as_user(auth_server.url, "alice"):
        result = promote(name, "1", "champion")
        with pytest.raises(Exception):
            promote(name, "2", "production")  # the pickled version fails verification: no alias
    assert result.digest.startswith("sha256:")
    aliases = _aliases(auth_server.url, name)
    assert aliases["champion"] == "1" and "production" not in aliases
