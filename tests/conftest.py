import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "")
# The suite tests the defaults (saves write the checkpoint only; test_onnx.py passes onnx=), not
# whatever the calling shell sets.
os.environ.pop("MLFLOW_SAFEFLAVOR_ONNX", None)
# Exports derived at serve time are cached per run, never in the user's ~/.cache.
os.environ.setdefault("MLFLOW_SAFEFLAVOR_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="safeflavor-test-cache-"))
warnings.filterwarnings("ignore", category=UserWarning, module="xgboost")

import zoo  # noqa: E402


@pytest.fixture(scope="session")
def cases():
    """Every zoo case, trained once per session, by name."""
    return {c.name: c for c in zoo.all_cases()}


@pytest.fixture(autouse=True)
def _clean_policy_env(monkeypatch):
    """Tests start with no operator additions unless they set them."""
    monkeypatch.delenv("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", raising=False)


class Worker:
    """A long-lived loader subprocess (tests/redteam_worker.py), restarted after a crash.

    ``load`` returns the worker's JSON reply, or ``{"outcome": "crashed", "returncode": N}`` when
    the process died (a negative N is the signal), so a crash fails one case, not the test run.
    """

    def __init__(self):
        self.proc = None

    def _start(self):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "redteam_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_SAFEFLAVOR_")},
        )
        assert "ready" in self.proc.stdout.readline()

    def load(self, path, loader="load_model", *, kwargs=None, env=None, X=None, timeout=120):
        import json

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        req = {"path": str(path), "loader": loader, "kwargs": kwargs or {}, "env": env or {}, "X": X}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=timeout)
            self.proc = None
            return {"outcome": "crashed", "returncode": code}
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """Two EC key pairs (P-256 "good", P-384 "other") as (private PEM, public PEM) paths."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from helpers import write_ec_keypair

    d = tmp_path_factory.mktemp("keys")
    return {name: write_ec_keypair(d, name, curve) for name, curve in (("good", ec.SECP256R1()), ("other", ec.SECP384R1()))}
