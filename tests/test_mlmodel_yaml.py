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


# --------------------------------------------------------------------------- the block reader
# record.safe_load first tries _block_yaml.load, which reads the block form MLflow writes line by
# line. Wherever it answers, its answer must be SafeLoader's; everywhere else it must step aside.

BLOCK_CASES = [
    "a: 1\n",
    "a: 1\nb: two\nc: 3.5\nd: true\ne: null\nf: off\ng: Yes\nh: NULL\n",
    "a: 0x1A\nb: 017\nc: 1_000\nd: 1:30\ne: 0b101\nf: 12\ng: 1e5\nh: 1.5e+3\ni: 3.11.7\n",
    "a: 2001-12-14\nb: 2001-12-14 21:59:43.10\nc: 2001-12-14t21:59:43.10-05:00\n",
    "y: 1\nn: 2\non: 3\nnull: 4\n1: 5\n0x1f: 6\n1.5: 7\n2001-12-14: 8\nTrue: 9\n",
    "a:\n  b:\n    c: d\n  e: f\ng: h\n",
    "a:\n   b: 1\n   c: 2\n",
    "a:\n- x\n- 1\n- true\nb: 2\n",
    "a:\n  - x\n  - y\nb: 2\n",
    "a:\n  - x\n  b: 2\n",
    "a:\n- x\n  - y\n",
    "a:\nb: 1\n",
    "a:\n",
    "a: []\nb: {}\nc: [1]\nd: {x: 1}\n",
    "a: 'quoted: # not a comment'\nb: \"dq\"\nc: 'it''s'\nd: ''\ne: \"\"\n",
    "a: 'one\n  two\n  three'\n",
    "a: 'one   \n    two   \n  three'\n",
    "a: 'one\n\n  two'\n",
    "a: 'one\n  \n  two'\n",
    "a: 'one\ntwo'\n",
    "a: 'x'' \n  ''y'\n",
    "a: 'unterminated\n",
    "a: 'x' y\n",
    "a: \"x\\ty\"\n",
    "a: \"x\" \n",
    "a: b c d\nb: b  c\nc: x -y\n",
    "a: b: c\n",
    "a: b:\n",
    "a: b \n",
    "a:  b\n",
    "a :b\n",
    "a:b\n",
    "a: -1\nb: .5\nc: ~\n",
    "a: @x\nb: `x`\nc: x@y\n",
    "a: x # comment\n",
    "a: 1\n\nb: 2\n",
    "a:\n   \nb: 1\n",
    "a:\n  b:\n     \n",
    "a: 'x\n     \n  y'\n",
    "  a: 1\n",
    "a: 1\n b: 2\n",
    "a: 1\n  b: 2\n",
    "a:\n    b: 1\n  c: 2\n",
    "- a\n- b\n",
    "a: 1",
    "a: 1\r\nb: 2\r\n",
    "a: \x01\n",
    "a: caf\u00e9\n",
    "a: 1\n---\nb: 2\n",
    "---\na: 1\n",
    "a: !!str 1\n",
    "a: &x 1\nb: *x\n",
    "a: |\n  x\n",
    "<<: {a: 1}\n",
    "a:\n  <<: 1\n",
    "'a': 1\n",
    "a.b/c+d@e-f: 1\n",
    "a:\n-\n",
    "a:\n- \n",
    "a:\n-  x\n",
    "a:\n- b: 1\n",
    "a:\n- b: 1\n  c:\n  - x\n  - y\n  d: 2\n- e:\n    f: 3\n- g\nh: 4\n",
    "a:\n- b: 1\n c: 2\n",
    "a:\n- b: 1\n   c: 2\n",
    "a:\n- b:1\n- b:\n",
    "a:\n  - b: 1\n    c: 2\n  - d\n",
    "a:\n- - x\n",
    "a: 1\na: 2\n",
    "a:\n  b: 1\na: 2\n",
    "".join(f"{'  ' * i}k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n",
]


def _block(text):
    from mlflow_safeflavor import _block_yaml

    try:
        return "value", _block_yaml.load(text)
    except _block_yaml.NotBlock:
        return "stepped aside", None


@pytest.mark.parametrize("text", BLOCK_CASES)
def test_block_reader_answers_as_safeloader_or_steps_aside(text):
    kind, value = _block(text)
    ref_kind, ref = _outcome(lambda t: yaml.load(t, Loader=_LOADER), text)
    if kind == "value":
        assert ref_kind == "value" and _same(value, ref), (text, value, ref)
    # And safe_load, whichever path it takes, still matches.
    got_kind, got = _outcome(safe_load, text)
    assert got_kind == ref_kind and _same(got, ref), (text, got, ref)


def test_block_reader_takes_the_common_forms():
    """Cases above that the reader must answer itself (not hand to PyYAML): the forms MLflow writes."""
    taken = BLOCK_CASES[:9] + [
        "a:\nb: 1\n",
        "a:\n",
        "a: []\nb: {}\n",
        "a: 'quoted: not a comment'\nb: \"dq\"\nc: 'it''s'\nd: ''\ne: \"\"\n",
        "a: 'one\n  two\n  three'\n",
        "a: 'one   \n    two   \n  three'\n",
        "a: 'x'' \n  ''y'\n",
        "a: b c d\nb: b  c\nc: x -y\n",
        "a.b/c+d@e-f: 1\n",
        "a: 1\na: 2\n",
        "a:\n- b: 1\n  c:\n  - x\n  - y\n  d: 2\n- e:\n    f: 3\n- g\nh: 4\n",
        "a:\n  - b: 1\n    c: 2\n  - d\n",
    ]
    for text in taken:
        assert _block(text)[0] == "value", text
        assert _same(_block(text)[1], yaml.load(text, Loader=_LOADER)), text


def test_block_reader_takes_what_save_model_writes(tmp_path, cases):
    from mlflow_safeflavor import _block_yaml

    for name in ("sk_ridge", "sk_rf_clf", "xgb_clf", "lgb_clf", "cb_clf_cat", "pipe_ct_xgb"):
        sf.save_model(cases[name].model, tmp_path / name, input_example=cases[name].X[:2])
        text = (tmp_path / name / "MLmodel").read_text()
        assert _same(_block_yaml.load(text), yaml.load(text, Loader=_LOADER)), name


def test_block_reader_on_generated_documents():
    """Random block documents over the reader's grammar and its edges, against SafeLoader."""
    rnd = random.Random(1205)
    words = ["a", "b", "model.txt", "y", "no", "On", "null", "NULL", "1", "012", "0x1f", "1_0", "1:30", "3.11.7",
             "1.5", "1e5", "2001-12-14", "2001-12-14 21:59:43", "x y", "x  y", "sha256:ab", "x-y", "_", "True",
             "0b11", "+1", "x@y", "x/y", "1.", "-", "~", "a:", "a: b", "''", "'q'", "'it''s'", '"d"', "[]", "{}"]
    answered = 0
    for _ in range(8000):
        lines, depth = [], 0
        for _ in range(rnd.randint(1, 8)):
            indent = "  " * depth + rnd.choice(["", "", "", " "])
            form = rnd.random()
            key = rnd.choice(words)
            if form < 0.5:
                lines.append(f"{indent}{key}: {rnd.choice(words)}")
            elif form < 0.7:
                lines.append(f"{indent}{key}:")
                depth = min(depth + 1, 4)
            elif form < 0.8:
                lines.append(f"{indent}- {rnd.choice(words)}")
            elif form < 0.85:
                lines.append(f"{indent}- {key}: {rnd.choice(words)}")
                depth = min(depth + 1, 4)
            elif form < 0.95:
                lines.append(f"{indent}{key}: 'x{rnd.choice(['', ' ', '  '])}")
                lines.append(f"{indent}{rnd.choice(['', ' ', '   '])}{rnd.choice(words)}{rnd.choice(['', ' '])}'")
            else:
                depth = max(depth - 1, 0)
        text = "\n".join(lines) + "\n"
        kind, value = _block(text)
        ref_kind, ref = _outcome(lambda t: yaml.load(t, Loader=_LOADER), text)
        if kind == "value":
            answered += 1
            assert ref_kind == "value" and _same(value, ref), (text, value, ref)
    assert answered > 400
