"""`make demo`'s command runs end to end on an embedded sqlite store in a fresh process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_demo_round_trips_every_library_and_refuses_tampering(tmp_path):
    exe = Path(sys.executable).parent / "mlflow-safeflavor"
    cmd = [str(exe)] if exe.exists() else [shutil.which("mlflow-safeflavor") or "mlflow-safeflavor"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(cmd + ["demo", "--dir", str(tmp_path / "store")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for lib in ("sklearn", "xgboost", "lightgbm", "catboost"):
        assert f"models:/demo-{lib}/1" in out.stdout
    assert out.stdout.count("identical predictions: True") == 4
    assert "refused with IntegrityError" in out.stdout and "refused with UntrustedTypesError" in out.stdout
    assert (tmp_path / "store" / "mlflow.db").exists()
