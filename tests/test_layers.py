"""The package's layering: no import cycles (lazy imports included), and a refused load imports nothing new.

The cycle check walks every ``import`` statement of the package with ``ast`` — at module level or
inside a function, since a lazy import is still a dependency — and treats importing
``a.b.c`` as depending on ``a.b.c`` and on the packages ``a.b`` and ``a`` whose ``__init__`` runs
first (except the importing module's own enclosing packages, which are already initialising). A cycle means no layer can be read or changed alone.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mlflow_safeflavor as sf

PACKAGE = Path(sf.__file__).parent
NAME = "mlflow_safeflavor"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def add(src: str, target: str) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            # A module's own enclosing packages are already initialising when it runs: no edge.
            if name in modules and name != src and not src.startswith(name + "."):
                graph[src].add(name)

    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(NAME):
                        add(mod, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith(NAME):
                    continue
                add(mod, target)
                for alias in node.names:  # ``from pkg import submodule``
                    add(mod, f"{target}.{alias.name}")
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package_lazy_imports_included():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_load_engine_sits_below_the_gate_and_the_flavor():
    graph = _graph()
    below = {m for m in graph if m.startswith(f"{NAME}.loader")}
    reach: set[str] = set()
    todo = list(below)
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in reach:
                reach.add(dep)
                todo.append(dep)
    for upper in ("flavor", "verify", "report", "registry", "registry.core", "registry.promote", "spark", "serving", "cli", "ui"):
        assert f"{NAME}.{upper}" not in reach, f"the loader depends on {upper}"


_REFUSED_LOAD = r"""
import json, sys
import mlflow_safeflavor as sf
path = sys.argv[1]
before = set(sys.modules)
try:
    sf.load_model(path)
except sf.SafeFlavorError as exc:
    outcome = type(exc).__name__
else:
    outcome = "loaded"
print(json.dumps({"outcome": outcome, "new": sorted(set(sys.modules) - before)}))
"""


def test_a_refused_load_imports_nothing_the_artifact_names(tmp_path, cases):
    """skops style: a model refused at the trust step leaves sys.modules with nothing new beyond a fixed list."""
    from hostile import edit_mlmodel, replace_payload, skops_calling

    path = tmp_path / "model"
    sf.save_model(cases["sk_ridge"].model, path)
    replace_payload(path, "model.skops", skops_calling("webbrowser", "open"))
    edit_mlmodel(path, lambda s: s.__setitem__("trusted_types", ["webbrowser.open"]))
    out = subprocess.run([sys.executable, "-c", _REFUSED_LOAD, str(path)], capture_output=True, text=True, timeout=120)
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["outcome"] == "UntrustedTypesError"
    new = set(reply["new"])
    assert not any(m == "webbrowser" or m.startswith("webbrowser.") for m in new)
    # What deciding may import: our own modules, MLflow's download, the YAML reader, skops' audit
    # with what skops.io imports behind it (sklearn, scipy, and sklearn's testing helpers, which pull
    # in pytest, rich and narwhals), and the standard library; nothing the artifact names.
    allowed_roots = {"mlflow_safeflavor", "mlflow", "mlflow_tracing", "skops", "sklearn", "scipy", "numpy",
                     "yaml", "joblib", "threadpoolctl", "packaging", "narwhals", "pytest", "_pytest",
                     "pluggy", "iniconfig", "py", "rich", "pygments"}
    foreign = sorted({m.split(".")[0] for m in new} - allowed_roots - set(sys.stdlib_module_names))
    assert [m for m in foreign if not m.startswith("_")] == [], foreign
