import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MLFLOW_SAFEFLAVOR_TRUSTED_TYPES", "")
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
