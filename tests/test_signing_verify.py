"""Signing with OpenSSF model-signing, signature enforcement on load, and the verify report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hostile import edit_mlmodel

import mlflow_safeflavor as sf
from mlflow_safeflavor.cli import main
from mlflow_safeflavor.errors import InvalidArgumentError, SignatureError
from mlflow_safeflavor.verify import verify_local


@pytest.fixture
def signed_model(cases, keys, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["pipe_ct_xgb"].model, path, input_example=cases["pipe_ct_xgb"].X[:3])
    sf.sign_model(path, keys["good"][0])
    return path


def test_signature_covers_every_file(signed_model):
    assert (signed_model / "model.sig").exists()
    bundle = json.loads((signed_model / "model.sig").read_text())
    assert "dsseEnvelope" in bundle or "messageSignature" in bundle


def test_signed_model_loads_with_the_key_from_argument_or_environment(signed_model, keys, cases, monkeypatch):
    case = cases["pipe_ct_xgb"]
    model = sf.load_model(str(signed_model), public_key=keys["good"][1])
    assert (model.predict(case.X) == case.model.predict(case.X)).all()
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_PUBLIC_KEY", f"{keys['other'][1]},{keys['good'][1]}")
    assert sf.load_pyfunc(str(signed_model)).predict(case.X).shape[0] == len(case.X)


def test_upstream_model_signing_verifier_accepts_our_signature(signed_model, keys):
    from model_signing import verifying

    from mlflow_safeflavor.signing import hashing_config

    verifying.Config().use_elliptic_key_verifier(public_key=keys["good"][1]).set_hashing_config(
        hashing_config()
    ).verify(signed_model, signed_model / "model.sig")


def test_upstream_cli_accepts_our_signature(signed_model, keys):
    """The model_signing CLI, with its own defaults except the ignored signature and git paths."""
    out = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(signed_model),
         "--signature", str(signed_model / "model.sig"), "--public_key", str(keys["good"][1]),
         "--ignore-paths", str(signed_model / "model.sig"), "--no-ignore-git-paths"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_upstream_verifier_rejects_an_edited_model(signed_model, keys):
    from model_signing import verifying

    from mlflow_safeflavor.signing import hashing_config

    (signed_model / "requirements.txt").write_text("evil-package\n")
    with pytest.raises(ValueError, match="Signature mismatch"):
        verifying.Config().use_elliptic_key_verifier(public_key=keys["good"][1]).set_hashing_config(
            hashing_config()
        ).verify(signed_model, signed_model / "model.sig")


def test_key_from_environment_makes_signature_mandatory(cases, keys, tmp_path, monkeypatch):
    sf.save_model(cases["sk_ridge"].model, tmp_path / "m")
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_PUBLIC_KEY", str(keys["good"][1]))
    with pytest.raises(SignatureError, match="model.sig is missing"):
        sf.load_model(str(tmp_path / "m"))
    import mlflow

    with pytest.raises(SignatureError):
        mlflow.pyfunc.load_model(str(tmp_path / "m"))


def test_missing_key_file_is_an_argument_error(signed_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match="not a readable PEM"):
        sf.load_model(str(signed_model), public_key=tmp_path / "nope.pub")


def test_tampered_model_is_never_signed(cases, keys, tmp_path):
    sf.save_model(cases["sk_ridge"].model, tmp_path / "m")
    data = bytearray((tmp_path / "m" / "model.skops").read_bytes())
    data[-30] ^= 1
    (tmp_path / "m" / "model.skops").write_bytes(bytes(data))
    with pytest.raises(sf.IntegrityError):
        sf.sign_model(tmp_path / "m", keys["good"][0])
    assert not (tmp_path / "m" / "model.sig").exists()


def test_resigning_replaces_the_signature(signed_model, keys):
    sf.sign_model(signed_model, keys["other"][0])
    sf.load_model(str(signed_model), public_key=keys["other"][1])
    with pytest.raises(SignatureError, match="does not verify"):
        sf.load_model(str(signed_model), public_key=keys["good"][1])


def test_sign_and_verify_commands(cases, keys, tmp_path):
    sf.save_model(cases["lgb_clf"].model, tmp_path / "m")
    runner = CliRunner()
    signed = runner.invoke(main, ["sign", str(tmp_path / "m"), "--key", str(keys["good"][0])])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(main, ["verify", str(tmp_path / "m"), "--public-key", str(keys["good"][1])])
    assert ok.exit_code == 0, ok.output
    assert "[PASS] signature" in ok.output and "verdict: OK" in ok.output
    (tmp_path / "m" / ".gitignore").write_text("*")
    bad = runner.invoke(main, ["verify", "--json", str(tmp_path / "m"), "--public-key", str(keys["good"][1])])
    assert bad.exit_code == 1
    doc = json.loads(bad.stdout)
    failed = {c["name"] for c in doc["checks"] if not c["ok"]}
    assert failed == {"signature"} and doc["ok"] is False


def test_verify_flags_pickles_code_other_flavors_and_loaders(cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    good = verify_local(path)
    assert good.ok and good.tree_digest.startswith("sha256:")
    (path / "extra.pkl").write_bytes(b"\x80\x04N.")
    (path / "code").mkdir()
    (path / "code" / "x.py").write_text("pass")

    def edit(section):
        pass

    edit_mlmodel(path, edit)
    import yaml

    doc = yaml.safe_load((path / "MLmodel").read_text())
    doc["flavors"]["python_function"]["loader_module"] = "evil"
    doc["flavors"]["sklearn"] = {"pickled_model": "extra.pkl"}
    (path / "MLmodel").write_text(yaml.safe_dump(doc))
    result = verify_local(path)
    failed = {c.name for c in result.failures}
    assert {"pickle", "code", "other_flavors", "loader_module"} <= failed
    assert not result.ok


def test_verify_reports_validation_failure(cases, tmp_path):
    from hostile import replace_payload

    path = tmp_path / "m"
    sf.save_model(cases["cb_reg"].model, path)
    replace_payload(path, "model.cbm", (path / "model.cbm").read_bytes()[:200])
    result = verify_local(path)
    assert [c.name for c in result.failures] == ["validation"]


def test_tree_digest_changes_with_any_file(cases, tmp_path):
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    before = verify_local(path).tree_digest
    (path / "conda.yaml").write_text((path / "conda.yaml").read_text() + "\n")
    assert verify_local(path).tree_digest != before


def test_hard_link_and_size_caps(cases, tmp_path, monkeypatch):
    import os

    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES", "100")
    with pytest.raises(sf.IntegrityError, match="cap"):
        sf.load_model(str(path))
    monkeypatch.delenv("MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES")
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_MAX_TOTAL_BYTES", "100")
    with pytest.raises(sf.IntegrityError, match="total cap"):
        sf.load_model(str(path))
    monkeypatch.delenv("MLFLOW_SAFEFLAVOR_MAX_TOTAL_BYTES")
    os.link(path / "model.skops", tmp_path / "alias")
    with pytest.raises(sf.IntegrityError, match="hard links"):
        sf.load_model(str(path))


def test_signed_dotfiles_are_covered_and_load(cases, keys, tmp_path):
    """A .gitattributes that was present at signing time is signed like any file."""
    path = tmp_path / "m"
    sf.save_model(cases["sk_ridge"].model, path)
    (path / ".gitattributes").write_text("*.skops binary\n")
    sf.sign_model(path, keys["good"][0])
    sf.load_model(str(path), public_key=keys["good"][1])
    (path / ".gitattributes").write_text("changed\n")
    with pytest.raises(SignatureError, match=".gitattributes"):
        sf.load_model(str(path), public_key=keys["good"][1])


def test_key_rotation_in_the_documented_order_never_breaks_a_loader(signed_model, keys, cases):
    """docs/registry.md's rotation: add the new public key everywhere, re-sign, then drop the old key.

    Re-signing replaces ``model.sig`` (one signature per model), so the order matters: loaders that
    trust old + new accept the model before and after the re-signing, while a loader still trusting
    only the old key fails the moment the model is re-signed.
    """
    old, new = keys["good"], keys["other"]
    X = cases["pipe_ct_xgb"].X
    both = [old[1], new[1]]
    # 1. The new public key is added beside the old one everywhere: the old signature still verifies.
    assert sf.load_model(str(signed_model), public_key=both).predict(X).shape[0] == len(X)
    # 2. Re-sign with the new key.
    sf.sign_model(signed_model, new[0])
    assert sf.load_model(str(signed_model), public_key=both).predict(X).shape[0] == len(X)
    assert sf.load_model(str(signed_model), public_key=new[1]).predict(X).shape[0] == len(X)
    # A loader skipped in step 1 (old key only) now refuses: why the new key goes out first.
    with pytest.raises(SignatureError):
        sf.load_model(str(signed_model), public_key=old[1])
    assert not verify_local(signed_model, public_key=old[1]).ok
    # 3. Dropping the old key leaves every loader working on the re-signed model.
    assert verify_local(signed_model, public_key=new[1]).ok


def test_a_signed_load_hashes_each_file_once(signed_model, keys, cases, monkeypatch):
    """The signature step and the digest step read the same cached bytes: one SHA-256 a file."""
    from mlflow_safeflavor import integrity

    hashed = []
    real = integrity.sha256_digest
    monkeypatch.setattr(integrity, "sha256_digest", lambda data: hashed.append(len(data)) or real(data))
    model = sf.load_model(str(signed_model), public_key=keys["good"][1])
    files = [p for p in signed_model.rglob("*") if p.is_file() and p.name != "model.sig"]
    assert len(hashed) == len(files)
    case = cases["pipe_ct_xgb"]
    assert (model.predict(case.X) == case.model.predict(case.X)).all()


def test_a_signed_file_changed_after_signing_is_still_refused(signed_model, keys):
    """The shared hash does not skip a check: a payload byte changed after signing fails."""
    payload = max((p for p in signed_model.rglob("*") if p.is_file() and p.name not in ("MLmodel", "model.sig")),
                  key=lambda p: p.stat().st_size)
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 1
    payload.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        sf.load_model(str(signed_model), public_key=keys["good"][1])
