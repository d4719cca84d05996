"""``mlflow models predict --env-manager uv`` end to end, with this package installed from a local wheel.

What MLflow 3.17 does with ``--env-manager uv`` (mlflow/utils/virtualenv.py): it creates a fresh
environment with ``uv venv <dir> --python=<python_env.yaml's python>`` in a temporary directory,
then, with that environment activated, runs ``uv pip install -r requirements.<random>.txt`` (the
model's python_env.yaml build dependencies first, then ``-r requirements.txt``), and finally runs
the prediction script inside it. The environment inherits this process's environment variables, so
uv's own settings apply: ``UV_FIND_LINKS=<dir>`` makes the locally built
``mlflow_safeflavor-*.whl`` findable while everything else (mlflow, numpy, scikit-learn, skops and
their dependencies) comes from the default index. uv does not read pip.conf or ``PIP_*`` settings;
``--env-manager virtualenv`` runs ``python -m pip install`` instead and would need
``PIP_FIND_LINKS``.

To prove that the package in the environment is the wheel built here (and not anything an index
serves), the wheel is built from a copy of the source whose version carries a local label,
``<version>+it<hex>``: the model's ``mlflow-safeflavor==<version>`` pin still matches it (PEP 440
ignores local labels for a specifier without one), and uv's install log names the exact version.

The environment build takes about 25-60 s (mostly installing mlflow's dependencies; uv's cache
makes repeated runs faster), so this stays in the default run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import mlflow_safeflavor
from mlflow_safeflavor._version import __version__

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = float(os.environ.get("SAFEFLAVOR_IT_ENV_TIMEOUT", "900"))


def _env(**extra: str) -> dict[str, str]:
    """Our environment minus MLFLOW_* settings; the venv's bin (uv, python) first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # not needed by these models, anywhere
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """Build a wheel of this package from a copy of the source tree, with a local version label."""
    root = tmp_path_factory.mktemp("wheel")
    src, out = root / "src", root / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mlflow_safeflavor", src / "mlflow_safeflavor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    version = f"{__version__}+it{uuid.uuid4().hex[:8]}"
    version_file = src / "mlflow_safeflavor" / "_version.py"
    text = version_file.read_text()
    assert f'__version__ = "{__version__}"' in text, text
    version_file.write_text(text.replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"'))

    try:
        import build  # noqa: F401

        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)]
    except ImportError:
        cmd = ["uv", "build", "--wheel", "--out-dir", str(out), str(src)]
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("mlflow_safeflavor-*.whl"))
    assert len(wheels) == 1, wheels
    assert wheels[0].name.startswith(f"mlflow_safeflavor-{version}-"), wheels[0].name
    return out, version


def test_predict_in_uv_environment_with_local_wheel(wheel, zoo_cases, tmp_path):
    wheel_dir, version = wheel
    case = zoo_cases["sklearn_pipeline"]  # scikit-learn + skops: the lightest environment
    model_dir = tmp_path / "model"
    mlflow_safeflavor.save_model(case.model, model_dir, input_example=case.X[:5])
    requirements = (model_dir / "requirements.txt").read_text().splitlines()
    assert f"mlflow-safeflavor=={__version__}" in requirements, requirements

    X = case.X.iloc[:20].reset_index(drop=True)
    records = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
               for r in X.to_dict(orient="records")]
    inp, out = tmp_path / "input.json", tmp_path / "output.json"
    inp.write_text(json.dumps({"dataframe_split": {"columns": list(X.columns),
                                                   "data": [list(r.values()) for r in records]}}))

    cmd = [sys.executable, "-m", "mlflow", "models", "predict", "-m", str(model_dir),
           "-i", str(inp), "-o", str(out), "--env-manager", "uv"]
    env = _env(
        UV_FIND_LINKS=str(wheel_dir),
        # The model pins its exact Python; fail fast rather than try to download an interpreter.
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{log[-6000:]}"

    # The environment was made by uv, and got this package from the wheel built above.
    assert re.search(r"Creating a new environment in \S+ with python version [\d.]+ using uv", log), log[-3000:]
    assert f"+ mlflow-safeflavor=={version}" in log, log[-6000:]

    got = json.loads(out.read_text())["predictions"]
    want = case.model.predict(X)
    assert got == want.tolist()
