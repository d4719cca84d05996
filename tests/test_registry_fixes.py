"""Issue 18 §4 on the registry side: model names with quotes are neither hidden nor confused, an
empty version search is not "nothing unsafe", and the webhook answers a non-ASCII signature with
401 instead of 500.

A real MLflow registry (SQLite in a temporary directory) and a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

NAMES = ["it's", 'say "hi"', "both'\"", "back\\slash", "plain"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/db.sqlite", registry_uri=f"sqlite:///{root}/db.sqlite")
    for name in NAMES:
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, source=str(root / "nowhere"))
    client.set_registered_model_alias("it's", "champion", "2")
    return client


@pytest.mark.parametrize("name", NAMES)
def test_search_versions_finds_exactly_the_named_model(client, name):
    from mlflow_safeflavor.migrate.source import search_versions

    found = search_versions(client, name)
    assert sorted((mv.name, int(mv.version)) for mv in found) == [(name, 1), (name, 2)]


def test_bulk_migration_lists_every_version_of_quoted_names(client):
    from mlflow_safeflavor.migrate.bulk import registered_versions

    assert registered_versions(client, NAMES) == [(n, v) for n in NAMES for v in ("1", "2")]


def test_registry_table_shows_quoted_names_and_counts_them(client):
    from mlflow_safeflavor.ui.registry_view import list_versions

    data = list_versions(client)
    shown = {(r.name, r.version) for r in data["rows"]}
    assert shown == {(n, v) for n in NAMES for v in ("1", "2")}
    # Their MLmodel cannot be read (the source is empty): unknown format, so counted as unsafe.
    assert data["counts"]["unsafe"] == len(shown)
    champion = next(r for r in data["rows"] if r.name == "it's" and r.version == "2")
    assert champion.protected == ["champion"] and champion.protected_unverified


def test_an_empty_version_search_is_shown_not_read_as_safe(client):
    """A registry that answers the version search with nothing (or an error) for a model that has
    aliased versions: the page shows a row flagged unknown, under both safety filters."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.ui.registry_view import list_versions

    class Refusing(MlflowClient):
        def search_model_versions(self, filter_string=None, *args, **kwargs):
            if "it" in (filter_string or ""):
                raise MlflowException("filter not supported by this registry")
            return super().search_model_versions(filter_string, *args, **kwargs)

    refusing = Refusing(tracking_uri=client.tracking_uri, registry_uri=client._registry_uri)
    for filter_name in (None, "unsafe", "protected-unverified"):
        data = list_versions(refusing, filter_name=filter_name)
        row = next(r for r in data["rows"] if r.name == "it's")
        assert row.version == "?" and row.unsafe and "could not be listed" in row.error
        assert row.protected == ["champion"] and row.protected_unverified


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webhook_url():
    import uvicorn

    from mlflow_safeflavor.registry.webhook import Receiver, create_app

    receiver = Receiver(secret="s3cret", client=None, protected=frozenset({"champion"}))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(receiver), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/webhook"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.parametrize("signature", ["v1,é", "v1,\u00ff\u00fe", "v1,abc é v1,def", "é"])
def test_webhook_answers_non_ascii_signatures_with_401(webhook_url, signature):
    headers = {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": str(int(time.time())),
               "X-MLflow-Signature": signature.encode("latin-1"), "Content-Type": "application/json"}
    r = requests.post(webhook_url, data=b"{}", headers=headers, timeout=30)
    assert r.status_code == 401 and "invalid X-MLflow-Signature" in r.json()["message"]


def test_webhook_still_accepts_a_valid_signature(webhook_url):
    from mlflow_safeflavor.registry.webhook import sign_delivery

    ts = str(int(time.time()))
    body = '{"entity": "model_version", "action": "ignored", "data": {}}'
    headers = {"X-MLflow-Delivery-Id": "d-valid", "X-MLflow-Timestamp": ts,
               "X-MLflow-Signature": sign_delivery("s3cret", "d-valid", ts, body), "Content-Type": "application/json"}
    assert requests.post(webhook_url, data=body.encode(), headers=headers, timeout=30).status_code == 202
