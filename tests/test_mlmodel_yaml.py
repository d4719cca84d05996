"""record.safe_load builds plain MLmodel documents itself; it must give what yaml.load with
SafeLoader gives, value for value and error for error, for every document."""

from __future__ import annotations

import math
import random

import pytest
import yaml

import mlflow_safeflavor as sf
from mlflow_safeflavor.record import safe_load

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

EDGE_CASES = [
    "",
    "# only a comment\n",
    "a: 1\n",
    "- 1\n- two\n- 3.5\n- true\n- null\n- ~\n",
    "a: {b: [1, 2, {c: d}]}\n",
    "a: 0x1A\nb: 0o17\nc: 017\nd: 1_000\ne: 1:30\nf: .inf\ng: -.inf\nh: .nan\ni: +12\nj: 0b101\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: 'yes'\nf: \"no\"\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\n",
    "a: !!omap [x: 1, y: 2]\n",
    "a: !!str 12\nb: !!int '7'\nc: !!float '1'\nd: !!bool 'true'\n",
    "a: &x [1, 2]\nb: *x\n",
    "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "a: 1\na: 2\n",
    "? [1, 2]\n: v\n",
    "? {a: 1}\n: v\n",
    "=: v\n",
    "a: !custom 1\n",
    "a: !!python/object:os.system [echo]\n",
    "a: [1, 2\n",
    "a: b: c\n",
    "\t- tab\n",
    "a: &x [*x]\n",
    "a: |\n  line one\n  line two\nb: >\n  folded\n  text\n",
    "'1': one\n1: int one\n1.0: float one\ntrue: t\nnull: n\n",
    "- [[[[[[[[[[1]]]]]]]]]]\n",
    "a: \"\\u00e9\\x41\\n\"\n",
    "--- 1\n--- 2\n",
    "%YAML 1.1\n---\na: 1\n",
    "[" * 3000 + "]" * 3000 + "\n",
]


def _outcome(fn, text):
    try:
        return "value", fn(text)
    except (yaml.YAMLError, RecursionError) as exc:
        return "error", type(exc).__name__


def _same(a, b, seen=None) -> bool:
    """Equal values of equal types, recursive structures included."""
    seen = set() if seen is None else seen
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (dict, list, tuple)):
        if (id(a), id(b)) in seen:
            return True
        seen.add((id(a), id(b)))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k], seen) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, seen) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_load_as_safeloader_loads_them(text):
    kind, value = _outcome(safe_load, text)
    ref_kind, ref = _outcome(lambda t: yaml.load(t, Loader=_LOADER), text)
    assert kind == ref_kind and _same(value, ref), (text[:60], value, ref)


def test_shared_objects_stay_shared_as_in_safeloader():
    doc = safe_load("a: &x [1, 2]\nb: *x\n")
    assert doc["a"] is doc["b"]


def test_mutated_mlmodels_load_as_safeloader_loads_them(tmp_path, cases):
    """A fixed set of byte mutations of real MLmodel files: every outcome matches SafeLoader's."""
    texts = []
    for name in ("sk_ridge", "xgb_clf", "lgb_clf"):
        sf.save_model(cases[name].model, tmp_path / name, input_example=cases[name].X[:2])
        texts.append((tmp_path / name / "MLmodel").read_bytes())
    rnd = random.Random(20261205)
    alphabet = b" :-[]{}&*!|>'\"#\n\t?,%@`0123456789abcxyz<="
    checked = 0
    for _ in range(600):
        data = bytearray(rnd.choice(texts))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(data))
            op = rnd.random()
            if op < 0.5:
                data[i] = rnd.choice(alphabet)
            elif op < 0.75:
                data[i:i] = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4)))
            else:
                del data[i : i + rnd.randint(1, 8)]
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            continue
        kind, value = _outcome(safe_load, text)
        ref_kind, ref = _outcome(lambda t: yaml.load(t, Loader=_LOADER), text)
        assert kind == ref_kind and _same(value, ref), text
        checked += 1
    assert checked > 500


def test_a_saved_mlmodel_takes_the_direct_build(tmp_path, cases, monkeypatch):
    """The fast path is taken for what MLflow writes (else the change would be dead weight)."""
    from mlflow_safeflavor import record

    sf.save_model(cases["lgb_clf"].model, tmp_path / "m", input_example=cases["lgb_clf"].X[:2])
    text = (tmp_path / "m" / "MLmodel").read_text()
    monkeypatch.setattr(record._SAFE_LOADER, "construct_document", lambda self, node: pytest.fail("fell back"))
    assert safe_load(text)["flavors"]["safeflavor"]["codec"] == "lightgbm"
