"""Format 3: large payload files are recorded with a ``sha256parts:`` digest, checked on every core.

The digest is a frozen part of the format (docs/reference.md): the tests pin its definition with a
sequential restatement and a known answer, prove every byte and the length are covered, and run
the refusals (a changed part, the new digest in an older format's record) through the loader.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import yaml
from hostile import edit_mlmodel

import mlflow_safeflavor as sf
from mlflow_safeflavor import integrity
from mlflow_safeflavor.errors import IntegrityError, MalformedArtifactError
from mlflow_safeflavor.verify import verify_local

MIB = 1 << 20
TREES = "trees.safetensors"


def _sequential(data: bytes) -> str:
    """The definition in docs/reference.md, one part after another on one thread."""
    outer = hashlib.sha256(b"mlflow-safeflavor sha256parts v1\0" + len(data).to_bytes(8, "little"))
    for start in range(0, len(data), MIB):
        outer.update(hashlib.sha256(data[start:start + MIB]).digest())
    return "sha256parts:" + outer.hexdigest()


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 7])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_parts_digest_is_the_documented_definition_on_any_number_of_threads(size, threads, monkeypatch):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    monkeypatch.setattr(integrity, "_hash_threads", lambda: threads)
    assert integrity.parts_digest(data) == _sequential(data)


def test_parts_digest_without_threads_to_start(monkeypatch):
    """A process limit that refuses new threads (the smoke-test child runs under one) costs speed,
    not the answer."""
    import threading

    def refuse(self):
        raise RuntimeError("can't start new thread")

    data = np.random.default_rng(1).integers(0, 256, 5 * MIB + 3, dtype=np.uint8).tobytes()
    monkeypatch.setattr(integrity, "_hash_threads", lambda: 4)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert integrity.parts_digest(data) == _sequential(data)


def test_parts_digest_known_answer():
    # Saved models record this value: a change here breaks every format-3 model.
    data = bytes(range(256)) * (3 * 4096 + 17)
    assert integrity.parts_digest(data) == (
        "sha256parts:1f4b48f6d05584b531e3501b2184f9f32f415c0771a2df0c666666f62c71fd90"
    )
    assert integrity.parts_digest(data) != "sha256parts:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("seed", range(4))
def test_a_stream_written_in_pieces_gets_the_same_digest(seed, tmp_path):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, int(rng.integers(0, 4 * MIB)), dtype=np.uint8).tobytes()
    cuts = np.sort(rng.integers(0, len(data) + 1, int(rng.integers(0, 40))))
    with open(tmp_path / "f", "wb") as fh:
        writer = integrity.PartsWriter(fh)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)]):
            writer.write(np.frombuffer(data, np.uint8)[a:b].reshape(-1, 1) if b > a else b"")
    assert (tmp_path / "f").read_bytes() == data
    assert writer.size == len(data)
    assert writer.digest() == _sequential(data)


def test_every_part_and_the_length_are_covered():
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * MIB + 100, dtype=np.uint8).tobytes())
    original = integrity.parts_digest(bytes(data))
    for position in (0, MIB - 1, MIB, 2 * MIB + 5, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 1
        assert integrity.parts_digest(bytes(changed)) != original, position
    assert integrity.parts_digest(bytes(data) + b"\0") != original
    assert integrity.parts_digest(bytes(data[:-1])) != original
    # Moving bytes between parts keeps each part's content but not the list.
    assert integrity.parts_digest(bytes(data[MIB:] + data[:MIB])) != original


def test_save_records_parts_for_large_files_only(cases, tmp_path, monkeypatch):
    case = cases["sk_rf_clf"]
    sf.save_model(case.model, tmp_path / "small")
    small = yaml.safe_load((tmp_path / "small" / "MLmodel").read_text())["flavors"]["safeflavor"]
    assert small["format_version"] == 2
    assert all(d.startswith("sha256:") for d in small["files"].values())

    monkeypatch.setattr(integrity, "PARTS_MIN_BYTES", 1024)
    sf.save_model(case.model, tmp_path / "large")
    large = yaml.safe_load((tmp_path / "large" / "MLmodel").read_text())["flavors"]["safeflavor"]
    assert large["format_version"] == 3
    assert large["files"][TREES].startswith("sha256parts:")
    assert large["files"][TREES] == _sequential((tmp_path / "large" / TREES).read_bytes())
    monkeypatch.setattr(integrity, "PARTS_MIN_BYTES", 8 * MIB)  # the loader follows the record, not the setting
    loaded = sf.load_model(str(tmp_path / "large"))
    np.testing.assert_array_equal(loaded.predict_proba(case.X), case.model.predict_proba(case.X))
    assert verify_local(tmp_path / "large").ok


def _large_model(case, path, monkeypatch):
    monkeypatch.setattr(integrity, "PARTS_MIN_BYTES", 1024)
    sf.save_model(case.model, path)
    monkeypatch.setattr(integrity, "PARTS_MIN_BYTES", 8 * MIB)


def test_a_changed_byte_in_any_part_is_refused_before_parsing(cases, worker, tmp_path, monkeypatch):
    path = tmp_path / "model"
    _large_model(cases["sk_rf_clf"], path, monkeypatch)
    data = bytearray((path / TREES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / TREES).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest mismatch") as err:
        sf.load_model(str(path))
    assert str(path / TREES) in str(err.value)
    reply = worker.load(path, "load_model")
    assert reply["outcome"] == "refused" and reply["type"] == "IntegrityError", reply
    report = verify_local(path)
    assert not report.ok and any(c.name == "digests" and not c.ok for c in report.checks)


def test_parts_digest_in_a_format_2_record_is_refused(cases, tmp_path, monkeypatch):
    path = tmp_path / "model"
    _large_model(cases["sk_rf_clf"], path, monkeypatch)
    edit_mlmodel(path, lambda s: s.__setitem__("format_version", 2))
    with pytest.raises(MalformedArtifactError, match="sha256parts") as err:
        sf.load_model(str(path))
    assert str(path) in str(err.value)


def test_a_malformed_parts_digest_is_refused(cases, tmp_path, monkeypatch):
    path = tmp_path / "model"
    _large_model(cases["sk_rf_clf"], path, monkeypatch)
    edit_mlmodel(path, lambda s: s["files"].__setitem__(TREES, "sha256parts:" + "0" * 63))
    with pytest.raises(MalformedArtifactError, match="sha256parts:<64 hex>"):
        sf.load_model(str(path))


def test_a_file_read_in_several_reads_comes_back_whole(tmp_path, monkeypatch):
    """read(2) returns at most ~2 GiB at once: the safe reader reads on until the end of the file."""
    data = np.random.default_rng(2).integers(0, 256, 3 * MIB + 5, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    real_read = integrity.os.read
    calls = []

    def short_read(fd, size):
        calls.append(size)
        return real_read(fd, min(size, MIB))

    monkeypatch.setattr(integrity.os, "read", short_read)
    assert integrity.read_file(tmp_path, "f.bin") == data
    assert len(calls) >= 4  # the reads really were short
    monkeypatch.setattr(integrity.os, "read", real_read)
    assert integrity.read_file(tmp_path, "f.bin") == data
