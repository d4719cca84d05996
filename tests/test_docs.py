"""The docs run: README's and the guide's Python blocks, the generated CLI reference, the serving image.

Every fenced ``python`` block of README.md and docs/guide.md runs in its own temporary directory in
a fresh interpreter (MLflow then uses that directory's ``mlflow.db``). A block that cannot run here
(it needs a tracking server, or is a fragment) is preceded by
``<!-- skip-test: <reason> -->``; the reason is required.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_DOCS = ("README.md", "docs/guide.md")
_BLOCK = re.compile(r"(?:<!--\s*skip-test(?P<colon>:?)(?P<reason>[^>]*?)-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks(name: str) -> list[tuple[int, str | None, str]]:
    """``(line, skip reason or None, code)`` for every fenced python block of ``name``."""
    text = (ROOT / name).read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        line = text[: m.start("code")].count("\n")
        skip = None
        if m.group(0).startswith("<!--"):
            skip = m.group("reason").strip() if m.group("colon") else ""
        out.append((line, skip, m.group("code")))
    return out


BLOCKS = [(name, line, skip, code) for name in RUN_DOCS for line, skip, code in python_blocks(name)]


def test_the_docs_have_blocks_to_run():
    assert sum(skip is None for *_, skip, _ in BLOCKS) >= 2, BLOCKS


@pytest.mark.parametrize("name,line,skip,code", BLOCKS, ids=[f"{n}:{ln}" for n, ln, _, _ in BLOCKS])
def test_python_block_runs(tmp_path, name, line, skip, code):
    if skip is not None:
        # A skip mark must say why, so a block is never silently dropped.
        assert skip, f"{name}:{line}: <!-- skip-test: ... --> needs a reason"
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{name}:{line} failed:\n{res.stderr[-3000:]}"


def test_a_skip_mark_without_a_reason_is_caught(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- skip-test -->\n```python\nraise SystemExit(1)\n```\n"
                   "<!-- skip-test: needs a tracking server -->\n```python\nx\n```\n```python\nprint(1)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [(skip, code) for _, skip, code in python_blocks("doc.md")] == [
        ("", "raise SystemExit(1)\n"), ("needs a tracking server", "x\n"), (None, "print(1)\n")]


def test_cli_reference_matches_the_commands():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_generated_serving_dockerfile_installs_the_package(tmp_path):
    """No Docker daemon here: check the build context MLflow generates installs mlflow-safeflavor."""
    from sklearn.linear_model import LogisticRegression

    import mlflow_safeflavor as sf
    from mlflow_safeflavor._version import __version__

    X = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
    sf.save_model(LogisticRegression().fit(X, [0, 1, 0, 1]), tmp_path / "m")
    exe = Path(sys.executable).with_name("mlflow")
    res = subprocess.run([str(exe), "models", "generate-dockerfile", "-m", str(tmp_path / "m"),
                          "--output-directory", str(tmp_path / "image")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    dockerfile = (tmp_path / "image" / "Dockerfile").read_text()
    copied = re.search(r"^COPY (\S+) /opt/ml/model$", dockerfile, re.M)
    assert copied, dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model'" in dockerfile  # installs the copied requirements.txt
    requirements = (tmp_path / "image" / copied.group(1) / "requirements.txt").read_text().split()
    assert f"mlflow-safeflavor=={__version__}" in requirements
    mlmodel = (tmp_path / "image" / copied.group(1) / "MLmodel").read_text()
    assert "loader_module: mlflow_safeflavor" in mlmodel
