"""The static pickle scan and the restricted unpickler: benign pickles pass, hostile ones are refused.

Every malicious payload in ``pickle_corpus.MALICIOUS`` would create a marker file if anything ran
it. Each is refused by the scan with the offending import named, by ``restricted_load``, and by
``convert`` before any process is started; the marker never appears. The restricted unpickler is
also driven directly (scan bypassed) to show the second wall holds on its own.
"""

from __future__ import annotations

import io
import pickle
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

import pickle_corpus as pc
from mlflow_safeflavor.cli import main
from mlflow_safeflavor.errors import MalformedArtifactError, PickleRefusedError, SafeFlavorError
from mlflow_safeflavor.migrate import convert, restricted_load, scan_pickle
from mlflow_safeflavor.migrate.allow import pickle_policy
from mlflow_safeflavor.migrate.pickles import _Reader


@pytest.fixture(scope="module")
def benign_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("benign")
    return {c.name: pc.dump_benign(c, d) for c in pc.BENIGN}


@pytest.mark.parametrize("case", [c.name for c in pc.BENIGN])
def test_benign_scan_allows_and_restricted_load_rebuilds(benign_files, case):
    path, model, sample = benign_files[case]
    report = scan_pickle(path)
    assert report.ok, report.format()
    assert report.findings and all(f.allowed for f in report.findings)
    rebuilt = restricted_load(path)
    assert type(rebuilt) is type(model)
    if hasattr(model, "predict") and not type(model).__name__ == "Booster":
        np.testing.assert_array_equal(rebuilt.predict(sample), model.predict(sample))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_of_the_same_model_scans_the_same_classes(tmp_path, protocol):
    model, sample = pc._rf()
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(model, protocol=protocol))
    report = scan_pickle(path)
    assert report.ok and report.protocol == protocol
    names = {f.name for f in report.findings}
    assert {"sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._tree.Tree"} <= names
    np.testing.assert_array_equal(restricted_load(path).predict_proba(sample), model.predict_proba(sample))


@pytest.mark.parametrize("name", sorted(pc.MALICIOUS))
def test_malicious_pickle_refused_by_scan_load_and_convert(tmp_path, name):
    marker = tmp_path / "MARKER"
    build, offending = pc.MALICIOUS[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(build(marker))

    report = scan_pickle(path)
    assert not report.ok
    named = [f.name for f in report.refused] + report.problems
    assert any(offending in n for n in named), (named, pc.disassemble(path.read_bytes()))

    with pytest.raises(PickleRefusedError) as err:
        restricted_load(path)
    assert any(offending in f for f in err.value.findings)
    assert offending in err.value.message and str(path) in err.value.message

    dest = tmp_path / "out"
    with pytest.raises(PickleRefusedError):
        convert(path, dest_path=dest, sample_input=np.zeros((2, 6)))
    assert not dest.exists()
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(pc.MALICIOUS))
def test_restricted_unpickler_alone_refuses(tmp_path, name):
    """With the scan bypassed, find_class still refuses the import (or the data stays inert)."""
    marker = tmp_path / "MARKER"
    data = pc.MALICIOUS[name][0](marker)
    stream = io.BytesIO(zlib.decompress(data) if data[:1] == b"x" else data)
    reader = _Reader(stream, pickle_policy(), symbolic=False, where=name, report=None)
    if name == "nested_pickle_in_model_bytes":
        model = reader.load()  # the inner pickle is only bytes: loading the model does not run it
        assert isinstance(model.cache_, bytes)
    else:
        with pytest.raises((PickleRefusedError, pickle.UnpicklingError)):
            reader.load()
    assert not marker.exists()


def test_hard_denied_import_stays_refused_even_when_trusted(tmp_path):
    marker = tmp_path / "MARKER"
    data = pc.MALICIOUS["subprocess_popen"][0](marker)
    report = scan_pickle(data=data, trusted_types=["subprocess.Popen"])
    assert [f.name for f in report.refused] == ["subprocess.Popen"]
    assert "hard-deny" in report.refused[0].reason


def test_unknown_class_can_be_allowed_by_trusted_types():
    data = pc._call("mypkg.models", "Custom")
    assert not scan_pickle(data=data).ok
    assert scan_pickle(data=data, trusted_types="mypkg.models.Custom").ok


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES", str(1024 * 1024))
    path = tmp_path / "bomb.joblib"
    path.write_bytes(zlib.compress(b"\x80\x04" + b"N" * (8 * 1024 * 1024) + b"."))
    assert path.stat().st_size < 1024 * 1024
    report = scan_pickle(path)
    assert not report.ok and "decompression bomb" in report.problems[0]
    with pytest.raises(PickleRefusedError):
        restricted_load(path)


@pytest.mark.parametrize("payload, words", [
    (b"\x80\x04\x95", "not a well-formed pickle"),
    (b"ZF" + b"\x00" * 40, "legacy format"),
    (b"\x04\x22\x4d\x18" + b"\x00" * 40, "lz4"),
    (b"\x80\x04N.trailing", "after the end of the pickle"),
    (b"\x80\x05\x97.", "not a well-formed pickle"),  # NEXT_BUFFER without buffers
])
def test_malformed_streams_are_refused_with_a_reason(tmp_path, payload, words):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    report = scan_pickle(path)
    assert not report.ok and any(words in p for p in report.problems), report.problems
    with pytest.raises(SafeFlavorError):
        restricted_load(path)


def test_joblib_array_declaring_more_bytes_than_the_file_holds(tmp_path):
    import joblib

    path = tmp_path / "m.joblib"
    joblib.dump({"a": np.arange(1000, dtype=np.float64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = scan_pickle(path)
    assert not report.ok
    with pytest.raises((MalformedArtifactError, PickleRefusedError)):
        restricted_load(path)


def test_protocol2_latin1_encode_is_the_only_codecs_use(tmp_path):
    data = pc._call("_codecs", "encode", "abc", "rot13", proto=2)
    report = scan_pickle(data=data)
    # The name is allowed, but only as encode(text, 'latin1'): the scan evaluates it that way too.
    assert [f.allowed for f in report.findings] == [True]
    assert not report.ok and "latin1" in report.problems[0]
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    with pytest.raises(SafeFlavorError):
        restricted_load(path)
    assert scan_pickle(data=pc._call("_codecs", "encode", "abc", "latin1", proto=2)).ok


def test_report_has_fickling_second_opinion(benign_files):
    report = scan_pickle(benign_files["svc"][0])
    assert report.fickling is not None and report.fickling["severity"]
    assert report.to_dict()["imports"][0]["allowed"] is True


def test_cli_scan_exit_codes_and_names(tmp_path, benign_files):
    runner = CliRunner()
    ok = runner.invoke(main, ["scan", str(benign_files["random_forest"][0])])
    assert ok.exit_code == 0 and "sklearn.tree._tree.Tree" in ok.output and "every import is allowed" in ok.output
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pc.MALICIOUS["pydoc_locate"][0](tmp_path / "M"))
    bad = runner.invoke(main, ["scan", str(evil), "--json"])
    assert bad.exit_code == 1
    assert '"name": "pydoc.locate"' in bad.output and '"ok": false' in bad.output


def test_scan_never_raises_and_never_runs_code_on_mutated_pickles(tmp_path):
    """Byte flips, truncations and splices of real model pickles: the scan always returns a report."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    marker = tmp_path / "MARKER"
    seeds = [pickle.dumps(pc._svc()[0], protocol=p) for p in (2, 5)]
    seeds.append(pc.MALICIOUS["os_system_reduce"][0](marker))
    seeds.append(pc.MALICIOUS["joblib_wrapper_payload"][0](marker))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(seeds), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
           st.integers(0, 10**6))
    def run(seed, flips, cut):
        data = bytearray(seed)
        for pos, val in flips:
            data[pos % len(data)] = val
        data = bytes(data[: max(1, cut % (len(data) + 1))])
        report = scan_pickle(data=data, second_opinion=False)
        assert isinstance(report.ok, bool)
        if report.ok:  # whatever passes the scan names only allowed imports
            assert all(f.allowed for f in report.findings)

    run()
    assert not marker.exists()
