"""Serving and batch scoring against real processes: ``mlflow models serve``, the hardened
``mlflow-safeflavor serve``, and ``mlflow models predict``.

Every server is a separate process group on 127.0.0.1 and a free port, started once per module
(all of them at once, so their start-ups overlap on small machines), waited for on ``/ping`` and
stopped with SIGTERM to the whole group (SIGKILL if that does not end it). One model per library
comes from the shared zoo (``conftest.SELECTED_CASES``), saved locally with an input example so the
signature exists. Every process runs with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.

Predictions are compared with the original in-memory model's. Labels must be exactly equal.
Probabilities are compared *exactly* too (``assert_array_equal``, no tolerance): the request is
built with Python's ``json`` (shortest round-trip float reprs, so the model sees the same float64
bits), and the server encodes its output the same way, float32 outputs (XGBoost) widened to float64
first, which is exact. A tolerance would only hide a real difference here.

Environment knobs:
    SAFEFLAVOR_IT_SERVE_TIMEOUT  seconds to wait for a server's ``/ping`` or a CLI run (default 300)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from serverproc import free_port as _free_port  # noqa: E402
from serverproc import stop_group as _stop  # noqa: E402
import yaml

import mlflow_safeflavor

TIMEOUT = float(os.environ.get("SAFEFLAVOR_IT_SERVE_TIMEOUT", "300"))
LIBS = ("sklearn_pipeline", "xgboost", "lightgbm", "catboost")  # keys of conftest.SELECTED_CASES
N_ROWS = 12

# server id -> (kind, library, options). "mlflow" = `mlflow models serve --env-manager local`,
# "safe" = `mlflow-safeflavor serve` with MLFLOW_ALLOW_MODEL_CODE_EXECUTION=false.
SERVERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    **{f"mlflow-{lib}": ("mlflow", lib, {}) for lib in LIBS},
    "safe-sklearn_pipeline": ("safe", "sklearn_pipeline", {}),
    "safe-xgboost-workers2": ("safe", "xgboost", {"workers": 2}),
    "safe-catboost-signed": ("safe", "catboost", {"signed": True}),
}
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs_records", "inputs_columns", "csv")


# ---------------------------------------------------------------------------------- processes


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _env(**extra: str) -> dict[str, str]:
    """Our environment minus MLFLOW_* settings, with the venv's bin first on PATH.

    ``mlflow models serve --env-manager local`` runs ``bash -c "exec uvicorn ..."``, so uvicorn
    must be found on PATH; the venv's bin directory is the one next to this interpreter. Every
    process runs with MLflow's own pickle switch off (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``):
    these models never need it, whichever server loads them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    env.update(extra)
    return env


def _safeflavor_cmd() -> list[str]:
    script = Path(sys.executable).parent / "mlflow-safeflavor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow_safeflavor.cli"]


# As the issue asks. MLflow 3.17 itself reads no such variable (its switch is
# MLFLOW_ALLOW_PICKLE_DESERIALIZATION, set for every process by _env); the hardened server's
# guarantees do not depend on either.
SAFE_ENV = {"MLFLOW_ALLOW_MODEL_CODE_EXECUTION": "false"}


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def wait(self) -> "Server":
        deadline = time.monotonic() + TIMEOUT
        while not self.ready:
            if _ping(self.url):
                self.ready = True
                break
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no /ping after {TIMEOUT:.0f}s:\n{self.log_tail()}")
            time.sleep(0.25)
        return self


def _launch(cmd: list[str], env: dict[str, str], log: Path, cwd: Path, stderr: Path | None = None) -> subprocess.Popen:
    with open(log, "wb") as out, open(stderr or os.devnull, "wb") as err:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err if stderr else subprocess.STDOUT, start_new_session=True,
        )


# -------------------------------------------------------------------------------------- data


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _rows(X: pd.DataFrame) -> pd.DataFrame:
    return X.iloc[:N_ROWS].reset_index(drop=True)


def _records(X: pd.DataFrame) -> list[dict[str, Any]]:
    return [{c: _py(v) for c, v in row.items()} for row in X.to_dict(orient="records")]


def payload(X: pd.DataFrame, fmt: str, params: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """The request body and content type for ``fmt``; JSON floats are written as exact reprs."""
    if fmt == "csv":
        return X.to_csv(index=False).encode(), "text/csv"
    records = _records(X)
    if fmt == "dataframe_split":
        body: dict[str, Any] = {fmt: {"columns": list(X.columns), "data": [list(r.values()) for r in records]}}
    elif fmt in ("dataframe_records", "instances"):
        body = {fmt: records}
    elif fmt == "inputs_records":
        body = {"inputs": records}
    elif fmt == "inputs_columns":
        body = {"inputs": {c: [_py(v) for v in X[c].tolist()] for c in X.columns}}
    else:  # pragma: no cover
        raise ValueError(fmt)
    if params:
        body["params"] = params
    return json.dumps(body).encode(), "application/json"


def post(url: str, body: bytes, content_type: str) -> tuple[int, str, str]:
    req = urllib.request.Request(f"{url}/invocations", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Content-Type", "")


def assert_predictions(expected: Any, actual: Any, what: str) -> None:
    """Same shape; labels exactly equal; floats exactly equal as float64 (see module docstring)."""
    e, a = np.asarray(expected), np.asarray(actual)
    assert e.shape == a.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if e.dtype.kind in "fc":
        np.testing.assert_array_equal(a.astype(np.float64), e.astype(np.float64), err_msg=what)
    else:
        assert a.tolist() == e.tolist(), f"{what}: {a.tolist()} != {e.tolist()}"


def expected(case, method: str = "predict") -> np.ndarray:
    return np.asarray(getattr(case.model, method)(_rows(case.X)))


def assert_mlflow_error(status: int, text: str, ctype: str, *needles: str) -> dict[str, Any]:
    assert status == 400, f"expected 400, got {status}: {text[:300]}"
    assert ctype.startswith("application/json"), ctype
    err = json.loads(text)
    assert set(err) >= {"error_code", "message"}, err
    assert err["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE"), err
    for needle in needles:
        assert needle in err["message"], f"{needle!r} not in {err['message'][:500]}"
    return err


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def saved(zoo_cases, workdir) -> dict[str, Path]:
    """Each library's model saved locally with an input example (so a signature exists)."""
    out = {}
    for lib in LIBS:
        case = zoo_cases[lib]
        path = workdir / "models" / lib
        mlflow_safeflavor.save_model(case.model, path, input_example=case.X[:5])
        out[lib] = path
    return out


@pytest.fixture(scope="module")
def keys(workdir) -> dict[str, Path]:
    """An EC P-256 key pair as PEM files."""
    from helpers import write_ec_keypair

    priv, pub = write_ec_keypair(workdir, "signing")
    return {"private": priv, "public": pub}


@pytest.fixture(scope="module")
def signed_catboost(saved, keys, workdir) -> Path:
    path = workdir / "models" / "catboost-signed"
    shutil.copytree(saved["catboost"], path)
    mlflow_safeflavor.sign_model(path, keys["private"])
    assert (path / "model.sig").is_file()
    return path


@pytest.fixture(scope="module")
def fleet(saved, signed_catboost, keys, workdir) -> dict[str, Server]:
    """Every server of SERVERS, launched at once; each test waits for the one it uses."""
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    servers: dict[str, Server] = {}
    try:
        for name, (kind, lib, opts) in SERVERS.items():
            port = _free_port()
            if kind == "mlflow":
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(saved[lib]),
                       "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
                env = _env()
            else:
                model = signed_catboost if opts.get("signed") else saved[lib]
                # The checkpoint's float64 answers are compared exactly: no ONNX export derived here
                # (test_serving_onnx.py covers --backend auto).
                cmd = [*_safeflavor_cmd(), "serve", str(model), "--backend", "native", "--host", "127.0.0.1", "--port", str(port)]
                if opts.get("workers"):
                    cmd += ["--workers", str(opts["workers"])]
                if opts.get("signed"):
                    cmd += ["--public-key", str(keys["public"])]
                env = _env(**SAFE_ENV)
            proc = _launch(cmd, env, logs / f"{name}.log", cwd=workdir)
            servers[name] = Server(name, port, proc, logs / f"{name}.log")
        yield servers
    finally:
        for server in servers.values():
            _stop(server.proc)


@pytest.fixture
def server(fleet, request) -> Server:
    return fleet[request.param].wait()


def _server_params(kind: str | None = None) -> list[Any]:
    return [pytest.param(n, id=n) for n, (k, _, _) in SERVERS.items() if kind in (None, k)]


# --------------------------------------------------------------------- a/b: protocol, both servers


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("server", _server_params(), indirect=True)
def test_invocations_formats_match_direct_predictions(server, fmt, zoo_cases):
    case = zoo_cases[SERVERS[server.name][1]]
    body, ctype = payload(_rows(case.X), fmt)
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, f"{server.name} {fmt}: {status} {text[:500]}"
    assert_predictions(expected(case), json.loads(text)["predictions"], f"{server.name} {fmt}")


@pytest.mark.parametrize("fmt", ("dataframe_split", "inputs_records"))
@pytest.mark.parametrize("server", _server_params(), indirect=True)
def test_params_predict_proba(server, fmt, zoo_cases):
    case = zoo_cases[SERVERS[server.name][1]]
    body, ctype = payload(_rows(case.X), fmt, params={"predict_method": "predict_proba"})
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, f"{server.name}: {status} {text[:500]}"
    proba = json.loads(text)["predictions"]
    assert_predictions(expected(case, "predict_proba"), proba, f"{server.name} predict_proba")


@pytest.mark.parametrize("server", _server_params(), indirect=True)
def test_bad_payloads_get_mlflow_400_json_errors(server, zoo_cases):
    case = zoo_cases[SERVERS[server.name][1]]
    X = _rows(case.X)
    # No recognised input field.
    assert_mlflow_error(*post(server.url, b'{"rows": [[1, 2, 3]]}', "application/json"), "dataframe_split")
    # Not JSON at all.
    assert_mlflow_error(*post(server.url, b"{not json", "application/json"))
    # A required column missing: MLflow's schema enforcement refuses it.
    body, ctype = payload(X.drop(columns=[X.columns[0]]), "dataframe_split")
    assert_mlflow_error(*post(server.url, body, ctype), str(X.columns[0]))
    # A predict method that is not allowed: our pyfunc's InvalidArgumentError, as MLflow's 400.
    body, ctype = payload(X, "dataframe_split", params={"predict_method": "__reduce__"})
    assert_mlflow_error(*post(server.url, body, ctype), "predict_method")
    # The server is still healthy afterwards.
    assert _ping(server.url)


@pytest.mark.parametrize("server", [pytest.param("safe-xgboost-workers2", id="safe-xgboost-workers2")], indirect=True)
def test_safe_serve_with_two_workers(server, zoo_cases):
    """Two uvicorn worker processes serve (each loaded and verified the model), and every request succeeds.

    uvicorn's supervisor restarts a worker that misses its 5 s health check (which happens on a
    busy machine while the worker imports), so the count is polled rather than read once.
    """
    deadline = time.monotonic() + 60
    while True:
        members = _group_members(server.proc.pid)
        workers = [pid for pid, cmd in members if "multiprocessing.spawn" in cmd]
        if len(workers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(workers) == 2, members
    case = zoo_cases["xgboost"]
    body, ctype = payload(_rows(case.X), "dataframe_split")
    want = expected(case)
    for _ in range(16):
        status, text, _ = post(server.url, body, ctype)
        assert status == 200, text[:300]
        assert_predictions(want, json.loads(text)["predictions"], "workers=2")


def _group_members(pgid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        out.append((int(entry.name), cmd))
    return out


# ------------------------------------------------------------------- b: the hardened server refuses


MARKER_MODULE = "safeflavor_it_marker"


@pytest.fixture(scope="module")
def hostile(saved, workdir) -> Path:
    """The sklearn model with MLmodel's loader_module swapped to a module shipped in ``code/``.

    The module writes the file named by ``$SAFEFLAVOR_IT_MARKER`` when imported — standing in for
    arbitrary code — and then fails, so nothing would be served.
    """
    path = workdir / "models" / "hostile"
    shutil.copytree(saved["sklearn_pipeline"], path)
    (path / "code").mkdir()
    (path / "code" / f"{MARKER_MODULE}.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SAFEFLAVOR_IT_MARKER']).write_text('artifact code ran')\n"
        "def _load_pyfunc(path, model_config=None):\n"
        "    raise RuntimeError('artifact code ran')\n"
    )
    mlmodel = path / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["flavors"]["python_function"]["loader_module"] = MARKER_MODULE
    doc["flavors"]["python_function"]["code"] = "code"
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Refusal:
    name: str
    returncode: int | None = None
    stderr: str = ""
    stdout: str = ""
    answered: bool = False
    marker: Path | None = None


@pytest.fixture(scope="module")
def refusals(saved, hostile, keys, workdir) -> dict[str, Refusal]:
    """Start the hardened server on each bad model at once; record exit code, stderr, and whether
    its port ever accepted a connection while it ran (and once more after it exited)."""
    cases_dir = workdir / "refusals"
    cases_dir.mkdir()

    tampered = cases_dir / "tampered"
    shutil.copytree(saved["sklearn_pipeline"], tampered)
    blob = tampered / "model.skops"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    loader_only = cases_dir / "loader-swapped"
    shutil.copytree(saved["sklearn_pipeline"], loader_only)
    doc = yaml.safe_load((loader_only / "MLmodel").read_text())
    doc["flavors"]["python_function"]["loader_module"] = "mlflow.sklearn"
    (loader_only / "MLmodel").write_text(yaml.safe_dump(doc, sort_keys=False))

    plan = {
        "tampered": ([str(tampered)], {}),
        "loader-swapped": ([str(loader_only)], {}),
        "hostile-code": ([str(hostile)], {}),
        "unsigned-public-key-flag": ([str(saved["sklearn_pipeline"]), "--public-key", str(keys["public"])], {}),
        "unsigned-public-key-env": ([str(saved["sklearn_pipeline"])], {"MLFLOW_SAFEFLAVOR_PUBLIC_KEY": str(keys["public"])}),
    }
    running = {}
    results = {}
    try:
        for name, (args, extra_env) in plan.items():
            port = _free_port()
            marker = cases_dir / f"{name}.marker"
            env = _env(**SAFE_ENV, **extra_env, SAFEFLAVOR_IT_MARKER=str(marker))
            out, err = cases_dir / f"{name}.out", cases_dir / f"{name}.err"
            cmd = [*_safeflavor_cmd(), "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
            running[name] = (_launch(cmd, env, out, cwd=cases_dir, stderr=err), port, out, err)
            results[name] = Refusal(name, marker=marker)
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p, *_ in running.values()) and time.monotonic() < deadline:
            for name, (proc, port, _, _) in running.items():
                if proc.poll() is None and _port_answers(port):
                    results[name].answered = True
            time.sleep(0.2)
        for name, (proc, port, out, err) in running.items():
            if _port_answers(port):
                results[name].answered = True
            results[name].returncode = proc.poll()
            results[name].stdout = out.read_text(errors="replace")
            results[name].stderr = err.read_text(errors="replace")
        yield results
    finally:
        for proc, *_ in running.values():
            _stop(proc)


def _assert_refused(r: Refusal, *needles: str) -> None:
    assert r.returncode is not None, f"{r.name}: still running after {TIMEOUT:.0f}s"
    assert r.returncode != 0, f"{r.name}: exited 0\n{r.stderr}"
    assert not r.answered, f"{r.name}: the port answered although the model must be refused"
    assert r.stderr.startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for needle in needles:
        assert needle in r.stderr, f"{r.name}: {needle!r} not in stderr:\n{r.stderr}"
    assert not (r.marker and r.marker.exists()), f"{r.name}: code from the artifact ran"


def test_safe_serve_refuses_tampered_payload(refusals, workdir):
    # The message names the file the user gave, not the server's private (deleted) copy.
    _assert_refused(refusals["tampered"], "digest mismatch", f"{workdir / 'refusals' / 'tampered' / 'model.skops'}:")


def test_safe_serve_refuses_swapped_loader_module(refusals, workdir):
    _assert_refused(refusals["loader-swapped"], f"{workdir / 'refusals' / 'loader-swapped' / 'MLmodel'}:",
                    "loader_module is 'mlflow.sklearn'")


def test_safe_serve_refuses_model_shipping_code_and_never_imports_it(refusals):
    _assert_refused(refusals["hostile-code"], "loader_module", MARKER_MODULE)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_safe_serve_with_public_key_refuses_unsigned_model(refusals, how):
    _assert_refused(refusals[f"unsigned-public-key-{how}"], "model.sig", "signature")


@pytest.mark.parametrize("server", [pytest.param("safe-catboost-signed", id="safe-catboost-signed")], indirect=True)
def test_safe_serve_with_public_key_serves_signed_model(server, zoo_cases):
    case = zoo_cases["catboost"]
    body, ctype = payload(_rows(case.X), "dataframe_records")
    status, text, _ = post(server.url, body, ctype)
    assert status == 200, text[:500]
    assert_predictions(expected(case), json.loads(text)["predictions"], "signed catboost")


# ------------------------------------------------------------------- c: mlflow models predict


PREDICT_RUNS: dict[str, tuple[str, str, str | None]] = {
    # run id -> (library, input format, predict_method param)
    **{f"{lib}-json": (lib, "dataframe_split", None) for lib in LIBS},
    "sklearn_pipeline-proba": ("sklearn_pipeline", "dataframe_records", "predict_proba"),
    "catboost-proba": ("catboost", "inputs_records", "predict_proba"),
    "xgboost-csv": ("xgboost", "csv", None),
}


@pytest.fixture(scope="module")
def predict_runs(saved, zoo_cases, hostile, workdir) -> dict[str, Any]:
    """``mlflow models predict -m DIR -i IN -o OUT [-t csv] --env-manager local``, all runs at once.

    Includes one run on the ``hostile`` model: MLflow's CLI follows MLmodel's loader_module.
    """
    d = workdir / "predict"
    d.mkdir()
    procs = {}
    for run, (lib, fmt, method) in PREDICT_RUNS.items():
        body, _ = payload(_rows(zoo_cases[lib].X), fmt, params={"predict_method": method} if method else None)
        inp, out = d / f"{run}.{'csv' if fmt == 'csv' else 'json'}", d / f"{run}.out.json"
        inp.write_bytes(body)
        cmd = [sys.executable, "-m", "mlflow", "models", "predict", "-m", str(saved[lib]), "-i", str(inp),
               "-o", str(out), "-t", "csv" if fmt == "csv" else "json", "--env-manager", "local"]
        procs[run] = (_launch(cmd, _env(), d / f"{run}.log", cwd=d), out)
    marker = d / "hostile.marker"
    inp = d / "hostile.json"
    inp.write_bytes(payload(_rows(zoo_cases["sklearn_pipeline"].X), "dataframe_split")[0])
    cmd = [sys.executable, "-m", "mlflow", "models", "predict", "-m", str(hostile), "-i", str(inp),
           "-o", str(d / "hostile.out.json"), "--env-manager", "local"]
    procs["hostile"] = (_launch(cmd, _env(SAFEFLAVOR_IT_MARKER=str(marker)), d / "hostile.log", cwd=d), None)
    results = {}
    try:
        for run, (proc, out) in procs.items():
            try:
                rc = proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                rc = None
            log = (d / f"{run}.log").read_text(errors="replace")
            results[run] = {"rc": rc, "log": log, "out": out, "marker": marker if run == "hostile" else None}
        yield results
    finally:
        for proc, _ in procs.values():
            _stop(proc)


@pytest.mark.parametrize("run", list(PREDICT_RUNS))
def test_mlflow_models_predict_matches_direct_predictions(predict_runs, run, zoo_cases):
    lib, fmt, method = PREDICT_RUNS[run]
    res = predict_runs[run]
    assert res["rc"] == 0, f"{run}: exit {res['rc']}\n{res['log'][-3000:]}"
    got = json.loads(res["out"].read_text())["predictions"]
    assert_predictions(expected(zoo_cases[lib], method or "predict"), got, run)


def test_mlflow_models_predict_follows_swapped_loader_module(predict_runs):
    """Why an untrusted artifact needs the hardened server: MLflow's own CLI (like
    ``mlflow models serve`` and ``mlflow.pyfunc.load_model``) imports whatever loader_module
    MLmodel names, with the artifact's ``code/`` on sys.path — even with
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false, which only gates pickle. The same model is refused
    by ``mlflow-safeflavor serve`` without running it (test_safe_serve_refuses_model_shipping_code...)."""
    res = predict_runs["hostile"]
    assert res["rc"] not in (0, None), res["log"][-2000:]
    assert res["marker"].read_text() == "artifact code ran"
