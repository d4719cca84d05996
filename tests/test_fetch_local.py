"""loader.download: a plain local path skips MLflow's artifact machinery with MLflow's exact result."""

from __future__ import annotations

import os

import pytest
from mlflow.artifacts import download_artifacts

from mlflow_safeflavor.errors import InvalidArgumentError
from mlflow_safeflavor.loader import fetch


def _mlflow(uri: str) -> str | type:
    """What MLflow's own download returns for ``uri`` (or the exception type it raises)."""
    try:
        return download_artifacts(artifact_uri=uri)
    except Exception as exc:  # noqa: BLE001 - any refusal is compared by type
        return type(exc)


def _ours(uri: str) -> str | type:
    try:
        return fetch.download(uri)
    except Exception as exc:  # noqa: BLE001
        return type(exc)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """Model-like directories with ordinary and awkward names, and links to them; cwd = tmp_path."""
    for name in ("model", "with space", "ünïcode", "a%20b", "hash#dir", "semi;colon", "q?mark", "co:lon", "tab\tname"):
        (tmp_path / "root" / name).mkdir(parents=True)
        (tmp_path / "root" / name / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MLmodel").write_text("flavors: {}\n")
    os.symlink(tmp_path / "root" / "model", tmp_path / "root" / "link_inside")
    os.symlink(tmp_path / "other", tmp_path / "root" / "link_outside")
    os.symlink(tmp_path / "root", tmp_path / "rootlink")
    monkeypatch.chdir(tmp_path)
    return tmp_path


PATHS = [
    "root/model",
    "./root/model",
    "root/./model",
    "other/../root/model",
    "root/model/",
    "root/model/.",
    "root/model/MLmodel",
    "root/with space",
    "root/ünïcode",
    "root/a%20b",
    "root/hash#dir",
    "root/semi;colon",
    "root/q?mark",
    "root/co:lon",
    "root/tab\tname",
    "root/link_inside",
    "root/link_outside",
    "rootlink/model",
    "root",
    ".",
]


@pytest.mark.parametrize("relative", PATHS)
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_local_path_same_as_mlflow(tree, relative, absolute):
    uri = str(tree / relative) if absolute else relative
    if absolute and relative.endswith("/"):
        uri += "/"
    assert _ours(uri) == _mlflow(uri)


def test_plain_local_path_does_not_reach_mlflow(tree, monkeypatch):
    """The shortcut is taken for an ordinary path (MLflow's download would raise here)."""

    def refuse(**kwargs):
        raise AssertionError(f"MLflow download called with {kwargs}")

    monkeypatch.setattr("mlflow.artifacts.download_artifacts", refuse)
    assert fetch.download("root/model") == str(tree / "root" / "model")
    assert fetch.download(tree / "root" / "with space") == str(tree / "root" / "with space")


def test_file_uri_and_destination_still_go_through_mlflow(tree, tmp_path):
    """file: URIs and a dst_path (a copy) are MLflow's job, with MLflow's results."""
    uri = (tree / "root" / "model").as_uri()
    assert fetch.download(uri) == download_artifacts(artifact_uri=uri)
    dst = tmp_path / "copy"
    out = fetch.download("root/model", str(dst))
    assert os.path.realpath(out).startswith(os.path.realpath(dst) + os.sep)
    assert open(os.path.join(out, "MLmodel")).read() == "flavors: {}\n"


def test_missing_local_path_is_a_typed_refusal(tree):
    with pytest.raises(InvalidArgumentError, match="no such file or directory"):
        fetch.download("root/absent")
