"""The registry promotion gate against real servers: promote, the safeflavor-gate app plugin, the webhook.

``gate_stack`` (conftest) runs two real ``mlflow server`` processes (proxied artifacts, 127.0.0.1)
and a real webhook receiver (``mlflow-safeflavor webhook``), once on sqlite stores with one worker
and once on a throwaway PostgreSQL cluster with ``--workers 4`` (every test taking ``gate_stack``
runs on both):

- the *gated* server runs ``--app-name safeflavor-gate`` and requires the gate's signature
  (``MLFLOW_SAFEFLAVOR_PUBLIC_KEY``): a protected alias is refused synchronously (403);
- the *plain* server has no plugin but a webhook registered to the receiver, so the receiver's
  after-the-fact checks (tag new versions, remove protected aliases from unverified ones) are
  observable — on the gated server the plugin would already have refused those aliases.

Tampering is done the way an attacker with write access to the artifact store would: bytes flipped
or files replaced under the server's ``--artifacts-destination``. The smoke-test guard is exercised
directly, including the raw native crash it exists to contain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import mlflow_safeflavor
from mlflow_safeflavor import IntegrityError
from mlflow_safeflavor.registry import (
    TAG_POLICY,
    TAG_REJECTED,
    TAG_VERIFIED,
    TAG_VERIFIED_AT,
    PromotionRejectedError,
    artifact_digest,
)
from mlflow_safeflavor.registry.core import evaluate, key_fingerprint
from mlflow_safeflavor.registry.smoke import run_limited, smoke_test
from mlflow_safeflavor.registry.webhook import sign_delivery
from mlflow_safeflavor.verify import verify_model

POLL_SECONDS = 150.0

# ---------------------------------------------------------------------------------- helpers


@contextmanager
def using(url: str):
    """Point the fluent API and default clients at ``url`` for a block; restore after."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(url)
    try:
        yield MlflowClient(tracking_uri=url)
    finally:
        mlflow.set_tracking_uri(previous)


def unique(prefix: str) -> str:
    return f"gate-{prefix}-{uuid.uuid4().hex[:8]}"


def train(seed: int):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    return LogisticRegression().fit(X, y), X


def log_safe(name: str, model: Any, X: Any, **kwargs: Any) -> tuple[Any, str]:
    with mlflow.start_run():
        info = mlflow_safeflavor.log_model(model, name="model", input_example=X[:5],
                                           registered_model_name=name, **kwargs)
    return info, str(info.registered_model_version)


def stored(server, info) -> Path:
    """The logged model's directory on the server's disk (the artifact store an attacker writes to)."""
    (path,) = list(server.artifacts.glob(f"*/models/{info.model_id}/artifacts"))
    return path


def flip_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def alias_of(client: MlflowClient, name: str, alias: str) -> str | None:
    return client.get_registered_model(name).aliases.get(alias)


def poll(check: Callable[[], Any], what: str, stack) -> Any:
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tail = stack.receiver_log.read_text(errors="replace")[-3000:]
    pytest.fail(f"timed out after {POLL_SECONDS:.0f}s waiting for {what}; receiver log:\n{tail}")


def assert_refused_by_plugin(exc: MlflowException, *needles: str) -> None:
    assert exc.error_code == "PERMISSION_DENIED", exc
    for needle in needles:
        assert needle in exc.message, exc.message


def crafted_xgboost_dir(path: Path) -> Path:
    """An XGBoost JSON model with a child index out of range, digests recomputed (SIGSEGV in raw XGBoost)."""
    import xgboost as xgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, (X[:, 0] > 0).astype(int))
    mlflow_safeflavor.save_model(model, path, model_format="json", input_example=X[:5])
    corrupt_xgboost(path)
    return path


def corrupt_xgboost(path: Path) -> None:
    from hostile import replace_payload

    doc = json.loads((path / "model.json").read_text())
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 10**6
    replace_payload(path, "model.json", json.dumps(doc).encode())


@dataclass
class WebhookModels:
    model: Any
    X: Any
    good: tuple[str, str, Any]  # name, version, ModelInfo
    pickled: tuple[str, str]


@pytest.fixture(scope="module")
def webhook_models(gate_stack) -> WebhookModels:
    """A safe and a pickled version registered on the plain server.

    Requested by the first test as well, so the receiver verifies them in the background while the
    gated-server tests run.
    """
    with using(gate_stack.plain.url):
        good_name, pickled_name = unique("wh-good"), unique("wh-pickled")
        model, X = train(7)
        info, good = log_safe(good_name, model, X)
        with mlflow.start_run():
            pickled = str(mlflow.sklearn.log_model(model, name="model", registered_model_name=pickled_name,
                                                   serialization_format="cloudpickle",
                                                   pip_requirements=[]).registered_model_version)
    return WebhookModels(model, X, (good_name, good, info), (pickled_name, pickled))


# ------------------------------------------------------------------- promote + plugin (gated)


@pytest.mark.usefixtures("webhook_models")
def test_promote_verifies_signs_tags_then_aliases_and_load_by_alias(gate_stack):
    keys = gate_stack.keys
    with using(gate_stack.gated.url) as client:
        name = unique("good")
        model, X = train(0)
        info, version = log_safe(name, model, X)

        result = mlflow_safeflavor.promote(name, version, "champion", signing_key=keys["private"])

        directory = stored(gate_stack.gated, info)
        assert (directory / "model.sig").is_file(), "the gate's signature was not uploaded next to the artifacts"
        tags = client.get_model_version(name, version).tags
        # The recorded digest is over the stored files with model.sig left out.
        assert tags[TAG_VERIFIED] == result.digest == artifact_digest(directory)
        policy = json.loads(tags[TAG_POLICY])
        assert policy["by"] == "promote" and policy["smoke_test"] is True
        assert policy["signed_by"] == key_fingerprint(keys["private"], private=True)
        assert policy["signature_required"] is False and policy["extra_trusted_types"] == []
        assert TAG_VERIFIED_AT in tags and TAG_REJECTED not in tags
        assert alias_of(client, name, "champion") == version

        expected = model.predict(X)
        native = mlflow_safeflavor.load_model(f"models:/{name}@champion", public_key=keys["public"])
        np.testing.assert_array_equal(native.predict(X), expected)
        pyfunc = mlflow_safeflavor.load_pyfunc(f"models:/{name}@champion", public_key=keys["public"])
        np.testing.assert_array_equal(np.asarray(pyfunc.predict(X)), expected)
        # The other URI users (verify, serve, spark) see the same stored files, signature included.
        report = verify_model(f"models:/{name}@champion", public_key=keys["public"])
        assert report.ok and report.tree_digest == result.digest, [c.detail for c in report.failures]


def test_artifacts_swapped_after_promotion_are_refused_at_load_and_by_the_plugin(gate_stack, tmp_path):
    with using(gate_stack.gated.url) as client:
        name = unique("swap")
        model, X = train(1)
        info, version = log_safe(name, model, X)
        # Without the gate's key the client-side checks pass and are recorded, but the server's
        # policy requires the gate's signature: the alias write is refused and promote says so.
        with pytest.raises(PromotionRejectedError) as exc:
            mlflow_safeflavor.promote(name, version, "champion")
        assert exc.value.failed == ["server_gate"] and "signature" in exc.value.message
        tags = client.get_model_version(name, version).tags
        assert tags[TAG_VERIFIED] == artifact_digest(stored(gate_stack.gated, info))
        assert "the tracking server's gate refused the alias" in tags[TAG_REJECTED]
        assert alias_of(client, name, "champion") is None

        client.set_registered_model_alias(name, "candidate", version)  # unprotected: passes through
        assert mlflow_safeflavor.load_model(f"models:/{name}@candidate").predict(X).tolist() == model.predict(X).tolist()

        # The attacker replaces the whole model with another valid safe-flavor model (digests in
        # MLmodel consistent), so only the recorded safeflavor.verified digest can tell.
        other, _ = train(2)
        mlflow_safeflavor.save_model(other, tmp_path / "other", input_example=X[:5])
        directory = stored(gate_stack.gated, info)
        for f in (tmp_path / "other").iterdir():
            shutil.copyfile(f, directory / f.name)
        mlflow_safeflavor.load_model(str(directory))  # a well-formed model on its own

        for uri in (f"models:/{name}@candidate", f"models:/{name}/{version}"):
            with pytest.raises(IntegrityError, match=TAG_VERIFIED) as exc:
                mlflow_safeflavor.load_model(uri)
            assert name in exc.value.message and "changed after" in exc.value.message
        with pytest.raises(IntegrityError, match=TAG_VERIFIED):
            mlflow_safeflavor.load_pyfunc(f"models:/{name}@candidate")
        # Every other path downloads through loader.download and compares the tag the same way.
        from mlflow_safeflavor.report import inspect_model
        from mlflow_safeflavor.verify import verify_model

        for check in (verify_model, inspect_model):
            with pytest.raises(IntegrityError, match=TAG_VERIFIED):
                check(f"models:/{name}@candidate")
        with pytest.raises(IntegrityError, match=TAG_VERIFIED):
            mlflow_safeflavor.sign_model(f"models:/{name}@candidate", gate_stack.keys["private"])
        served = subprocess.run(
            [sys.executable, "-m", "mlflow_safeflavor.cli", "serve", f"models:/{name}@candidate", "--port", "1"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": gate_stack.gated.url},
        )
        assert served.returncode != 0 and TAG_VERIFIED in served.stdout + served.stderr, served.stderr[-2000:]
        # MLflow's own loaders (load_model, models serve, spark_udf's executors) download models:/ URIs
        # themselves and reach our _load_pyfunc with the copy. Up to 3.17 MLflow marks the copy with
        # registered_model_meta, so it is compared with the tag; 3.18 writes no such file, so a
        # copy cannot say where it came from (docs/registry.md: use our loaders for models:/ URIs).
        from mlflow_safeflavor._mlflow_compat import mlflow_version

        if mlflow_version() < (3, 18):
            with pytest.raises(IntegrityError, match=TAG_VERIFIED):
                mlflow.pyfunc.load_model(f"models:/{name}@candidate")
        else:
            mlflow.pyfunc.load_model(f"models:/{name}@candidate")  # the documented gap

        with pytest.raises(MlflowException) as refused:
            client.set_registered_model_alias(name, "champion", version)
        assert_refused_by_plugin(refused.value, name, "changed after verification")
        assert alias_of(client, name, "champion") is None


def test_tampered_version_refused_by_promote_and_by_the_plugin(gate_stack):
    with using(gate_stack.gated.url) as client:
        name = unique("tampered")
        model, X = train(4)
        info, version = log_safe(name, model, X)
        directory = stored(gate_stack.gated, info)
        flip_byte(directory / "model.skops")

        with pytest.raises(PromotionRejectedError) as exc:
            mlflow_safeflavor.promote(name, version, "champion", signing_key=gate_stack.keys["private"])
        assert "digests" in exc.value.failed
        assert name in exc.value.message and "digest mismatch" in exc.value.message
        tags = client.get_model_version(name, version).tags
        assert "digest mismatch" in tags[TAG_REJECTED] and TAG_VERIFIED not in tags
        assert not (directory / "model.sig").exists(), "a tampered model must never be signed"
        assert alias_of(client, name, "champion") is None

        # Straight to the REST API, bypassing promote: refused by the server itself.
        with pytest.raises(MlflowException) as refused:
            client.set_registered_model_alias(name, "champion", version)
        assert_refused_by_plugin(refused.value, name, f"no {TAG_VERIFIED} tag")

        # A forged tag matching the tampered bytes does not help: the server re-verifies under its
        # policy (signature required, digests) — on both the REST and the UI route.
        client.set_model_version_tag(name, version, TAG_VERIFIED, artifact_digest(directory))
        for prefix in ("api", "ajax-api"):
            response = requests.post(f"{gate_stack.gated.url}/{prefix}/2.0/mlflow/registered-models/alias",
                                     json={"name": name, "alias": "Production", "version": version}, timeout=60)
            assert response.status_code == 403, response.text
            body = response.json()
            assert body["error_code"] == "PERMISSION_DENIED"
            assert "signature" in body["message"] and "digest mismatch" in body["message"]
        assert client.get_registered_model(name).aliases == {}

        # Other requests pass through untouched, including unprotected aliases.
        client.set_registered_model_alias(name, "staging", version)
        assert alias_of(client, name, "staging") == version


def test_crafted_native_payload_version_is_rejected_by_structural_validation(gate_stack):
    import xgboost as xgb

    with using(gate_stack.gated.url) as client:
        name = unique("crafted")
        rng = np.random.default_rng(5)
        X = rng.normal(size=(60, 4))
        model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, (X[:, 0] > 0).astype(int))
        info, version = log_safe(name, model, X, model_format="json")
        corrupt_xgboost(stored(gate_stack.gated, info))  # digests recomputed by the attacker

        with pytest.raises(PromotionRejectedError) as exc:
            mlflow_safeflavor.promote(name, version, "champion")
        assert exc.value.failed == ["validation"], exc.value.message
        assert "child index out of range" in client.get_model_version(name, version).tags[TAG_REJECTED]
        assert alias_of(client, name, "champion") is None


def test_pickled_version_is_never_promoted(gate_stack):
    from click.testing import CliRunner

    from mlflow_safeflavor.cli import main

    with using(gate_stack.gated.url) as client:
        name = unique("pickled")
        model, _ = train(6)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                            serialization_format="cloudpickle", pip_requirements=[])
        version = str(info.registered_model_version)

        result = CliRunner().invoke(main, ["promote", name, version, "--alias", "champion"])
        assert result.exit_code == 1, result.output
        output = result.output + (getattr(result, "stderr", "") or "")
        assert f"error: model {name!r} version {version} was not promoted" in output
        assert "not a safe-flavor model" in output and "pickle" in output
        rejected = client.get_model_version(name, version).tags[TAG_REJECTED]
        assert "not a safe-flavor model" in rejected and "model.pkl" in rejected
        assert alias_of(client, name, "champion") is None
        with pytest.raises(MlflowException) as refused:
            client.set_registered_model_alias(name, "champion", version)
        assert_refused_by_plugin(refused.value, name)


# ------------------------------------------------------------------------- webhook (plain)


def test_webhook_tags_new_versions_and_undoes_unverified_protected_aliases(gate_stack, webhook_models):
    good_name, good, info = webhook_models.good
    pickled_name, pickled = webhook_models.pickled
    with using(gate_stack.plain.url) as client:

        def outcome(name: str, version: str) -> dict[str, str] | None:
            tags = client.get_model_version(name, version).tags
            return tags if (TAG_VERIFIED in tags or TAG_REJECTED in tags) else None

        good_tags = poll(lambda: outcome(good_name, good), "the webhook to verify the new version", gate_stack)
        directory = stored(gate_stack.plain, info)
        assert good_tags.get(TAG_VERIFIED) == artifact_digest(directory), good_tags.get(TAG_REJECTED)
        assert json.loads(good_tags[TAG_POLICY])["by"] == "webhook"
        pickled_tags = poll(lambda: outcome(pickled_name, pickled), "the webhook to reject the pickled version", gate_stack)
        assert TAG_VERIFIED not in pickled_tags and "pickle" in pickled_tags[TAG_REJECTED]

        # No plugin here: the aliases are set, then undone after the fact.
        flip_byte(directory / "model.skops")
        client.set_registered_model_alias(good_name, "champion", good)
        client.set_registered_model_alias(pickled_name, "production", pickled)
        client.set_registered_model_alias(pickled_name, "staging", pickled)  # unprotected: left alone

        def undone(name: str, version: str, alias: str) -> str | None:
            # The receiver removes the alias first and then records why.
            reason = client.get_model_version(name, version).tags.get(TAG_REJECTED, "")
            if alias_of(client, name, alias) is None and "removed by the safeflavor webhook" in reason:
                return reason
            return None

        reason = poll(lambda: undone(good_name, good, "champion"), "the webhook to remove @champion", gate_stack)
        assert "changed after verification" in reason
        reason = poll(lambda: undone(pickled_name, pickled, "production"), "the webhook to remove @production", gate_stack)
        assert f"no {TAG_VERIFIED} tag" in reason
        assert alias_of(client, pickled_name, "staging") == pickled


def test_webhook_refuses_forged_stale_and_replayed_deliveries(gate_stack):
    url = f"{gate_stack.receiver_url}/webhook"
    body = json.dumps({"entity": "registered_model", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": "x", "tags": {}, "description": None}})

    def send(delivery_id: str, timestamp: int, signature: str | None, payload: str = body) -> requests.Response:
        headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
                   "X-MLflow-Timestamp": str(timestamp)}
        if signature is not None:
            headers["X-MLflow-Signature"] = signature
        return requests.post(url, data=payload.encode(), headers=headers, timeout=30)

    now = int(time.time())
    delivery = str(uuid.uuid4())
    cases = {
        "unsigned": send(delivery, now, None),
        "wrong secret": send(delivery, now, sign_delivery("not-the-secret", delivery, str(now), body)),
        "body changed": send(delivery, now, sign_delivery(gate_stack.secret, delivery, str(now), body),
                             payload=body.replace('"x"', '"y"')),
        "stale": send(delivery, now - 3600, sign_delivery(gate_stack.secret, delivery, str(now - 3600), body)),
    }
    for what, response in cases.items():
        assert response.status_code == 401, (what, response.text)
        assert response.json()["error_code"] == "UNAUTHENTICATED", what

    good = sign_delivery(gate_stack.secret, delivery, str(now), body)
    first = send(delivery, now, good)
    assert first.status_code == 202, first.text
    replay = send(delivery, now, good)
    assert replay.status_code == 409 and replay.json()["error_code"] == "REPLAYED_DELIVERY", replay.text


# ---------------------------------------------------------------------- the smoke-test guard


_RAW_XGBOOST = """\
import sys
import numpy as np
import xgboost as xgb
booster = xgb.Booster(model_file=bytearray(open(sys.argv[1], "rb").read()))
booster.predict(xgb.DMatrix(np.random.default_rng(0).normal(size=(64, max(booster.num_features(), 1)))))
print("LOADED-AND-PREDICTED")
"""


def test_smoke_guard_contains_a_native_crash(tmp_path):
    """What each layer catches for a payload that segfaults XGBoost: the validators refuse it before
    any native code sees it (the child's loader runs the same validators), and when the bytes reach
    the native library anyway — here raw XGBoost run through the same guard — the crash comes back
    as a rejection naming the signal while this (gate) process carries on."""
    crafted = crafted_xgboost_dir(tmp_path / "crafted")

    verdict = evaluate(crafted, label="models:/crafted/1", smoke=True)
    assert not verdict.ok and verdict.failed == ["validation"] and "child index out of range" in verdict.reason

    script = tmp_path / "raw_xgboost.py"
    script.write_text(_RAW_XGBOOST)
    crashed = run_limited([str(script), str(crafted / "model.json")], timeout=120)
    assert not crashed.ok and crashed.returncode is not None and crashed.returncode < 0, crashed
    assert "killed by SIG" in crashed.detail


def test_smoke_guard_enforces_time_and_memory_limits(tmp_path):
    model, X = train(8)
    mlflow_safeflavor.save_model(model, tmp_path / "m", input_example=X[:5])

    slow = smoke_test(tmp_path / "m", timeout=0.5)
    assert not slow.ok and "did not finish within 0.5s" in slow.detail

    # Far too little address space for the interpreter with numpy and mlflow: RLIMIT_AS is in force.
    starved = smoke_test(tmp_path / "m", memory_mb=200)
    assert not starved.ok and starved.returncode not in (0, None), starved
    assert "MemoryError" in starved.detail or "memory" in starved.detail, starved
