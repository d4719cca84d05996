"""Issue 18: the pickle scan is bounded (size, opcodes, time, memory), fails closed, and only ever
answers with a report or a SafeFlavorError.

The hostile files come from ``hostile_pickles`` (the issue's table and more). Limits are lowered
through their environment variables so each refusal happens in well under a second; what the
files cost at full size is measured by ``benchmarks/bench_hostile_scan.py``, not here.
"""

from __future__ import annotations

import os
import pickle
import threading

import pytest

import hostile_pickles as hp
from mlflow_safeflavor.errors import InvalidArgumentError, PickleRefusedError
from mlflow_safeflavor.migrate import restricted_load, scan_pickle
from mlflow_safeflavor.migrate.unpickler import MAX_NESTING


def _problems(report) -> str:
    return "\n".join(report.problems)


@pytest.mark.parametrize("build, words", [
    (hp.bytearray_memo_20x, "bytearray(1073741824) allocates memory"),
    (hp.bytes_newobj, "bytes(1073741824) allocates memory"),
    (lambda: hp.list_of_range(10**8), "list(...) of a builtins.range"),
    (lambda: hp.list_of_range(10**8, "set"), "set(...) of a builtins.range"),
    (lambda: hp.list_of_range(10**8, "frozenset"), "frozenset(...) of a builtins.range"),
    (lambda: hp.list_of_range(10**8, "tuple"), "tuple(...) of a builtins.range"),
])
def test_allocating_constructors_are_refused_without_allocating(tmp_path, build, words):
    data = build()
    report = scan_pickle(data=data, second_opinion=False)
    assert not report.ok and words in _problems(report), report.format()
    path = tmp_path / "bomb.pkl"
    path.write_bytes(data)
    with pytest.raises(PickleRefusedError) as err:
        restricted_load(path)  # the scan refuses before the real unpickler could allocate anything
    assert words in err.value.message


def test_plain_values_from_the_stream_still_pass():
    """The argument checks refuse sizes and foreign iterables, not the values real models pickle."""
    value = {"b": bytearray(b"abc"), "s": {1, 2}, "f": frozenset("ab"), "r": range(3), "c": 1 + 2j, "sl": slice(1, 2)}
    for proto in (2, 3, 4, 5):
        report = scan_pickle(data=pickle.dumps(value, protocol=proto), second_opinion=False)
        assert report.ok, (proto, report.format())


def test_opcode_budget_follows_the_memory_setting(monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB", "64")  # 64 MiB / 256 B = 262,144 opcodes
    report = scan_pickle(data=hp.none_pops(1), second_opinion=False)  # 1 MB of N0: 524,288 opcodes
    assert not report.ok and report.budget_exceeded
    assert "memory budget of 64 MB" in _problems(report) and "MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB" in _problems(report)
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB", "1024")
    assert scan_pickle(data=hp.none_pops(1), second_opinion=False).ok


def test_time_budget_refuses_and_names_the_setting(monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT", "0.2")
    report = scan_pickle(data=hp.none_pops(16), second_opinion=False)  # 16.8M opcodes: seconds of work
    assert not report.ok and report.budget_exceeded
    assert "time budget of 0.2s" in _problems(report) and "MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT" in _problems(report)


def test_cancelled_scan_stops_and_refuses():
    cancel = threading.Event()
    cancel.set()
    report = scan_pickle(data=hp.none_pops(4), second_opinion=False, cancel=cancel)
    assert not report.ok and "cancelled" in _problems(report)


def test_decompression_is_capped_by_the_scan_limit(monkeypatch):
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MAX_MB", "1")
    bomb = hp.gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024
    report = scan_pickle(data=bomb, second_opinion=False)
    assert not report.ok and "decompression bomb" in _problems(report) and "MLFLOW_SAFEFLAVOR_SCAN_MAX_MB" in _problems(report)


def test_caller_cap_lowers_the_limit_and_is_named():
    bomb = hp.gzip_bomb(8 * 1024 * 1024)
    report = scan_pickle(data=bomb, second_opinion=False, max_bytes=1024 * 1024, max_bytes_setting="MLFLOW_SAFEFLAVOR_UI_MAX_UPLOAD_MB")
    assert not report.ok and "MLFLOW_SAFEFLAVOR_UI_MAX_UPLOAD_MB" in _problems(report)


def test_many_distinct_imports_are_all_listed_once_each():
    report = scan_pickle(data=hp.distinct_imports(5000), second_opinion=False)
    assert not report.ok and len(report.refused) == 5000 and all(f.count == 1 for f in report.findings)


def test_chained_calls_keep_a_short_name():
    report = scan_pickle(data=hp.call_chain(20_000), second_opinion=False)
    assert [f.name for f in report.refused] == ["mypkg.f"]


@pytest.mark.parametrize("depth", range(1, MAX_NESTING + 1))
def test_nested_payload_is_found_at_every_examined_depth(tmp_path, depth):
    marker = tmp_path / "MARKER"
    report = scan_pickle(data=hp.nested_in_bytes(marker, depth), second_opinion=False)
    assert [f.name for f in report.refused] == ["posix.system"], report.format()
    assert not marker.exists()


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, MAX_NESTING + 4])
def test_nesting_past_the_limit_is_refused_not_ignored(tmp_path, depth):
    marker = tmp_path / "MARKER"
    report = scan_pickle(data=hp.nested_in_bytes(marker, depth), second_opinion=False)
    assert not report.ok and f"more than {MAX_NESTING} levels deep" in _problems(report)
    assert not marker.exists()


@pytest.mark.parametrize("build, refused", [
    (hp.nested_truncated, ["posix.system"]),
    (hp.nested_garbled_then_payload, []),
    (hp.protocol2_bytes_nested, ["posix.system"]),
])
def test_nested_pickles_that_do_not_parse_are_refused(tmp_path, build, refused):
    marker = tmp_path / "MARKER"
    report = scan_pickle(data=build(marker), second_opinion=False)
    assert not report.ok
    assert [f.name for f in report.refused] == refused
    if build is not hp.protocol2_bytes_nested:
        assert "could not be fully scanned" in _problems(report)
    assert not marker.exists()


def test_text_that_merely_looks_like_protocol_0_is_data():
    value = {"features": ["cost in USD.", "(ratio).", "c.", "}."], "blob": b"(not a pickle)."}
    for proto in (0, 2, 4):
        assert scan_pickle(data=pickle.dumps(value, protocol=proto), second_opinion=False).ok


def test_only_safeflavor_errors_escape(tmp_path):
    with pytest.raises(InvalidArgumentError):
        scan_pickle(tmp_path / "missing.pkl")
    real = tmp_path / "real.pkl"
    real.write_bytes(pickle.dumps([1, 2]))
    link = tmp_path / "link.pkl"
    os.symlink(real, link)
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        scan_pickle(link)
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        scan_pickle(link, isolated=True)


def test_isolated_scan_matches_the_in_process_one(tmp_path):
    marker = tmp_path / "MARKER"
    data = hp.nested_in_bytes(marker, 3)
    here, there = scan_pickle(data=data), scan_pickle(data=data, isolated=True)
    assert here.to_dict() == there.to_dict()
    assert not marker.exists()


def test_isolated_scan_memory_limit_is_a_refusal(monkeypatch):
    # The stream cap is raised past what the memory budget can hold: the kernel's limit stops it.
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MAX_MB", "4096")
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES", str(8 * 1024**3))
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB", "1200")
    report = scan_pickle(data=hp.gzip_bomb(3 * 1024**3), isolated=True, second_opinion=False)
    assert not report.ok and report.budget_exceeded
    assert "MLFLOW_SAFEFLAVOR_SCAN_MEMORY_MB" in _problems(report) or "MLFLOW_SAFEFLAVOR_MAX_FILE_BYTES" in _problems(report), _problems(report)


def test_fickling_runs_under_the_time_budget(monkeypatch):
    """fickling's evaluation of 2 MB of opcodes takes several seconds: its child is stopped."""
    monkeypatch.setenv("MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT", "2")
    report = scan_pickle(data=hp.none_pops(2, compress=False))
    assert not report.ok and report.fickling["severity"] == "OVER_BUDGET"
    assert "fickling second opinion did not finish within its time budget of 2s" in _problems(report)
    assert "MLFLOW_SAFEFLAVOR_SCAN_TIMEOUT" in _problems(report)


def test_isolated_scan_can_be_cancelled(monkeypatch):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    report = scan_pickle(data=hp.none_pops(2, compress=False), isolated=True, cancel=cancel)
    assert not report.ok and "cancelled" in _problems(report)


def test_convert_does_not_follow_a_symlinked_pickle(tmp_path):
    import numpy as np

    from mlflow_safeflavor.migrate import convert

    real = tmp_path / "real.pkl"
    real.write_bytes(pickle.dumps([1, 2]))
    link = tmp_path / "link.pkl"
    os.symlink(real, link)
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        convert(link, dest_path=tmp_path / "out", sample_input=np.zeros((2, 2)))
    assert not (tmp_path / "out").exists()


def test_uri_only_never_reads_a_local_directory_named_like_the_uri(tmp_path, monkeypatch):
    """``models:/churn/1`` as a relative path is a directory ``models:`` in the cwd; uri_only skips it."""
    import mlflow

    from mlflow_safeflavor.migrate import scan_source

    local = tmp_path / "models:" / "churn" / "1"
    local.mkdir(parents=True)
    (local / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n")
    (local / "model.pkl").write_bytes(pickle.dumps([1, 2]))
    monkeypatch.chdir(tmp_path)
    assert scan_source("models:/churn/1").ok  # the CLI's reading: a local path first
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(InvalidArgumentError, match="cannot be downloaded"):
            scan_source("models:/churn/1", uri_only=True)
    finally:
        mlflow.set_tracking_uri(previous)
