#!/usr/bin/env bash
# One extra CI leg: the package and its dev extras in their own venv, .venv-mlflow-VERSION, on the
# given MLflow release, then a subset of the suites (below) that covers registry, the gate plugin,
# serving, Spark, the web page's API and hardened mode.
#
#   scripts/mlflow-leg.sh VERSION [--install-only] [pytest args...]
#
# Install: a plain resolve of `-e .[dev] mlflow==VERSION` first. Only if that fails (3.18.0 on
# 2026-12-05: mlflow-tracing==3.18.0 is not on the index yet) does it install the project as the pin
# resolves and put mlflow/mlflow-skinny VERSION over it with --no-deps; once the index has the
# missing sub-package the plain resolve succeeds and the fallback is never used again. A stamp in
# the venv (pyproject's digest + VERSION + how it was installed) lets the next run skip the
# install, or only retry the plain resolve, instead of undoing a --no-deps install.
set -euo pipefail
cd "$(dirname "$0")/.."

ver="${1:?usage: scripts/mlflow-leg.sh VERSION [--install-only] [pytest args...]}"
shift
install_only=0
if [ "${1:-}" = "--install-only" ]; then install_only=1; shift; fi

PYTHON="${PYTHON:-python3}"
venv=".venv-mlflow-${ver}"
py="${venv}/bin/python"
stamp="${venv}/.safeflavor-leg"
want="$(sha256sum pyproject.toml | cut -c1-16) mlflow==${ver}"

installed_mlflow() { "$py" -c 'import importlib.metadata as m; print(m.version("mlflow"))' 2>/dev/null || true; }

if [ ! -x "$py" ]; then
    "$PYTHON" -m venv "$venv"
    "$py" -m pip install --quiet --upgrade pip 2>/dev/null
fi

# Install when the stamp or the installed MLflow is not what this run wants. A "no-deps" stamp also
# retries the plain resolve (a failed resolve changes nothing), so the leg moves to a normal install
# as soon as the index can give one, and otherwise keeps what it has.
need=0
if [ "$(cut -d' ' -f1,2 "$stamp" 2>/dev/null)" != "$want" ] || [ "$(installed_mlflow)" != "$ver" ]; then need=1; fi
if [ "$need" -eq 1 ] || grep -q ' no-deps$' "$stamp" 2>/dev/null; then
    echo "mlflow-leg: resolving the project with mlflow==${ver} into ${venv}"
    if "$py" -m pip install --quiet -e ".[dev]" "mlflow==${ver}" 2>"${venv}/pip-plain.log"; then
        echo "$want plain" >"$stamp"
    elif [ "$need" -eq 1 ]; then
        echo "mlflow-leg: plain resolve of mlflow==${ver} failed (tail of ${venv}/pip-plain.log):"
        tail -n 2 "${venv}/pip-plain.log" | cut -c1-300 | sed 's/^/    /'
        echo "mlflow-leg: installing the project as pinned, then mlflow/mlflow-skinny ${ver} with --no-deps"
        "$py" -m pip install --quiet -e ".[dev]" 2>"${venv}/pip-pinned.log" \
            || { tail -n 20 "${venv}/pip-pinned.log" >&2; exit 1; }
        "$py" -m pip install --quiet --no-deps "mlflow==${ver}" "mlflow-skinny==${ver}" 2>"${venv}/pip-no-deps.log" \
            || { tail -n 20 "${venv}/pip-no-deps.log" >&2; exit 1; }
        echo "$want no-deps" >"$stamp"
    else
        echo "mlflow-leg: plain resolve of mlflow==${ver} still fails; keeping the --no-deps install"
    fi
fi

got="$(installed_mlflow)"
if [ "$got" != "$ver" ]; then
    echo "mlflow-leg: ${venv} has mlflow ${got}, not ${ver}" >&2
    exit 1
fi
echo "mlflow-leg: ${venv}: mlflow ${got} ($(cut -d' ' -f3 "$stamp") install)"
[ "$install_only" -eq 1 ] && exit 0

# MLflow warns at every import that mlflow-tracing is older than mlflow: true, and known, for a
# --no-deps install. Silenced for that case only, so commands' stderr (which tests read) is theirs.
if grep -q ' no-deps$' "$stamp"; then
    export PYTHONWARNINGS="ignore:Versions of mlflow:UserWarning${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
fi

# The subset (about 4 minutes on an idle 2-core machine, 10 under the full suite's load):
# - tests/test_mlflow_compat.py: every adapter of _mlflow_compat against this MLflow, and the guard;
# - integration/test_hardened.py: MLflow's switch off — load_model/load_pyfunc, `mlflow-safeflavor
#   serve` over HTTP, spark_udf on Spark local[2], promote against `mlflow server --app-name
#   safeflavor-gate`, convert, and the web page's API; MLflow's own load/serve/spark_udf refusing;
# - integration/test_registry.py on sqlite: the gate plugin on both alias routes, the webhook
#   receiver with MLflow's webhooks, signatures (the PostgreSQL stack is the main leg's).
SUBSET=(
    tests/test_mlflow_compat.py
    integration/test_hardened.py
    integration/test_registry.py
)
export PYSPARK_PYTHON="${PWD}/${py}"
exec "$py" -m pytest -q "${SUBSET[@]}" -k "not postgresql" "$@"
