"""Decoding the tree section: every line of every tree block, the span of every field's value, and
the numbers in those values (their characters and how many each field holds).

LightGBM cuts the tree section at tree_sizes and parses every block on its own. Here the whole
section is scanned once with NumPy for its separators ('\\n', ' ') and signs ('-', '+'), the only
bytes <= 45 it may hold. The line breaks give every block's lines. When every block is in
model_to_string's exact layout (the common case), one comparison of the section's "skeleton" (its
bytes without the number bytes but '\\n') with the layouts' skeletons, plus the few key bytes that
are number bytes ('e') and each '=', proves every line's key and that values hold number bytes
only (see :func:`_all_canonical`); otherwise the keys are compared vectorised for blocks in a
layout and parsed line by line for the others. Every field's value is then known by its span, and
the numbers of the whole section are checked together: their characters, the bytes around
separators and signs, and how many values each field holds. Only the fields that define the
tree's shape are parsed (by :func:`parse_ints` and :func:`small_ints`, digit position by digit
position across all trees at once).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from mlflow_safeflavor.validate._common import INT32_MAX, Refused, first_outside, offsets_of

# The fields of a tree block, in the order model_to_string writes them (lightgbm >= 3.1).
TREE_KEYS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "cat_boundaries",
    "cat_threshold",
    "is_linear",
    "leaf_const",
    "num_features",
    "leaf_features",
    "leaf_coeff",
    "shrinkage",
)
K = {key: i for i, key in enumerate(TREE_KEYS)}
_TREE_KEYS_B = {key.encode(): i for i, key in enumerate(TREE_KEYS)}

# How many values a field holds.
_SCALAR, _INTERNAL, _LEAF, _CAT_BOUNDS, _FREE = range(5)
_RULE = {
    "num_leaves": _SCALAR,
    "num_cat": _SCALAR,
    "split_feature": _INTERNAL,
    "split_gain": _INTERNAL,
    "threshold": _INTERNAL,
    "decision_type": _INTERNAL,
    "left_child": _INTERNAL,
    "right_child": _INTERNAL,
    "leaf_value": _LEAF,
    "leaf_weight": _LEAF,
    "leaf_count": _LEAF,
    "internal_value": _INTERNAL,
    "internal_weight": _INTERNAL,
    "internal_count": _INTERNAL,
    "cat_boundaries": _CAT_BOUNDS,
    "cat_threshold": _FREE,  # checked with the categories
    "is_linear": _SCALAR,
    "leaf_const": _FREE,  # linear trees only: one per leaf (set in check_trees)
    "num_features": _FREE,
    "leaf_features": _FREE,  # checked by _check_linear
    "leaf_coeff": _FREE,
    "shrinkage": _SCALAR,
}
_RULES = np.array([_RULE[key] for key in TREE_KEYS])
# leaf_features/leaf_coeff are written with double spaces; they are checked per tree instead.
_LOOSE = np.array([key in ("leaf_features", "leaf_coeff") for key in TREE_KEYS])

# model_to_string's block layouts (lightgbm >= 3.1): "Tree=i", the fields, two blank lines.
_CAT_KEYS = ("cat_boundaries", "cat_threshold")
_LINEAR_KEYS = ("leaf_const", "num_features", "leaf_features", "leaf_coeff")
_PLAIN = tuple(k for k in TREE_KEYS if k not in _CAT_KEYS + _LINEAR_KEYS)
_WITH_CAT = _PLAIN[:14] + _CAT_KEYS + _PLAIN[14:]  # before is_linear
_LAYOUTS = (
    _PLAIN,
    _WITH_CAT,
    _PLAIN[:15] + _LINEAR_KEYS + _PLAIN[15:],  # after is_linear
    _WITH_CAT[:17] + _LINEAR_KEYS + _WITH_CAT[17:],
)
_LAYOUT_LINES = np.array([len(layout) + 3 for layout in _LAYOUTS])
_WIDTH = max(len(k) for k in TREE_KEYS) + 1


NUMBER_BYTES = b"0123456789.e+- \n"


def _outside_value(key: bytes) -> int:
    """Bytes of a line's 'key=' part that are not among NUMBER_BYTES."""
    return len(key.translate(None, NUMBER_BYTES))


# What a line keeps of its bytes once the number bytes but '\n' are dropped: its key's letters,
# '_' and '='. The whole section's "skeleton" is compared with the expected one in one go.
_SKELETON_DROP = NUMBER_BYTES.replace(b"\n", b"")
_PINS = 4  # the most number bytes ('e') in a key, plus its '='


def _layout_tables() -> tuple[np.ndarray, ...]:
    prefix, mask, field, start, blank, outside, pin_at, pin_byte = [], [], [], [], [], [], [], []
    for layout in _LAYOUTS:
        rows = [b"Tree="] + [k.encode() + b"=" for k in layout] + [b"", b""]
        for i, row in enumerate(rows):
            prefix.append(list(row.ljust(_WIDTH, b"\0")))
            mask.append([True] * len(row) + [False] * (_WIDTH - len(row)))
            field.append(K[layout[i - 1]] if 0 < i <= len(layout) else -1)
            start.append(len(row))
            blank.append(not row)
            outside.append(_outside_value(row))
            # Bytes a canonical line must hold at given offsets: a field line's number bytes inside
            # its key ('e') and its '='; a blank line's '\n' at offset 0. The spare slots repeat
            # offset 0 (a key's first letter; the Tree= line is compared whole by _tree_lines).
            pins = [j for j, ch in enumerate(row) if ch in _SKELETON_DROP or ch == 61] if 0 < i <= len(layout) else []
            pins += [0] * (_PINS - len(pins))
            pin_at.append(pins)
            pin_byte.append([(row or b"\n")[j] for j in pins])
    base = offsets_of(_LAYOUT_LINES)[:-1]
    return (
        np.array(prefix, dtype=np.uint8),
        np.array(mask, dtype=bool),
        np.array(field),
        np.array(start),
        np.array(blank),
        np.array(outside),
        np.array(pin_at, dtype=np.int64),
        np.array(pin_byte, dtype=np.uint8),
        base,
    )


(
    _PREFIX,
    _PREFIX_MASK,
    _ROW_FIELD,
    _ROW_VALUE_START,
    _ROW_BLANK,
    _ROW_OUTSIDE,
    _ROW_PIN_AT,
    _ROW_PIN_BYTE,
    _LAYOUT_BASE,
) = _layout_tables()
# Lines in a block -> its layout in _LAYOUTS (-1: none has that many lines).
_LAYOUT_OF_LINES = np.full(int(_LAYOUT_LINES.max()) + 2, -1)
_LAYOUT_OF_LINES[_LAYOUT_LINES] = np.arange(len(_LAYOUTS))
_LAYOUT_SKELETON = tuple(
    b"".join((row.translate(None, _SKELETON_DROP) + b"\n") for row in [b"Tree="] + [k.encode() + b"=" for k in layout] + [b"", b""])
    for layout in _LAYOUTS
)


class Section(NamedTuple):
    """The tree section, decoded: its bytes, where its separators and signs are, and for every line
    its tree, its field (-1: a ``Tree=`` or blank line) and where its value starts; ``spans`` holds
    each tree's field values as [start, end) byte ranges (-1: the field is absent)."""

    region: bytes
    a: np.ndarray  # the bytes as uint8
    pos: np.ndarray  # positions of the separators and signs
    c: np.ndarray  # their bytes
    is_newline: np.ndarray
    newline_at: np.ndarray  # where in pos the line breaks are
    newlines: np.ndarray  # positions of the line breaks: one a line
    line_block: np.ndarray  # per line: its tree
    field: np.ndarray  # per line: its field index in TREE_KEYS, -1 for Tree= and blank lines
    value_start: np.ndarray  # per line: where its value starts
    kv: np.ndarray  # the lines that hold a field
    spans: np.ndarray  # (tree, field, start/end)


def read_section(region: bytes, sizes: list[int]) -> Section:
    """Cut the tree section into lines and fields; refuse characters that belong to no number."""
    n = len(sizes)
    a = np.frombuffer(region, dtype=np.uint8)
    # Separators and signs ('\n' 10, ' ' 32, '+' 43, '-' 45: the only bytes <= 45 allowed).
    pos = np.flatnonzero(a <= 45)
    c = a.take(pos)
    is_newline = c == 10
    newline_at = np.flatnonzero(is_newline)
    newlines = pos.take(newline_at)
    skeleton = region.translate(None, _SKELETON_DROP)
    line_block, field, value_start, outside = _tree_lines(region, a, newlines, sizes, skeleton)

    # Characters: besides digits, '.', 'e', ' ', '\n', '+', '-', the section holds only the
    # "Tree=" and field names of its lines (no letters, quotes, controls, non-ASCII in a value).
    # (outside is None when _tree_lines matched the whole skeleton, which already proves it.)
    if outside is not None and len(skeleton) - skeleton.count(b"\n") != outside:
        raise Refused("a tree has a value with a character that is not part of a number")

    kv = np.flatnonzero(field >= 0)
    spans = np.full((n, len(TREE_KEYS), 2), -1, dtype=np.int64)
    at = (line_block.take(kv) * len(TREE_KEYS) + field.take(kv)) * 2  # flat index of [tree, field, 0]
    flat = spans.reshape(-1)
    flat[at] = value_start.take(kv)
    flat[at + 1] = newlines.take(kv)
    return Section(region, a, pos, c, is_newline, newline_at, newlines, line_block, field, value_start, kv, spans)


def expected_counts(L: np.ndarray, num_cat: np.ndarray, linear: np.ndarray, parsed: np.ndarray) -> np.ndarray:
    """How many values each field of each tree holds (-1: any), given its num_leaves ``L``."""
    n_int = L - 1
    expected = np.full((L.size, len(TREE_KEYS)), -1, dtype=np.int64)
    expected[:, _RULES == _SCALAR] = 1
    expected[:, _RULES == _INTERNAL] = np.where(parsed & (n_int > 0), n_int, -1)[:, None]
    expected[:, _RULES == _LEAF] = np.where(parsed, L, -1)[:, None]
    expected[:, K["leaf_value"]] = L
    expected[:, K["cat_boundaries"]] = np.where(num_cat > 0, num_cat + 1, -1)
    expected[:, K["leaf_const"]] = np.where(linear, L, -1)
    expected[:, K["num_features"]] = np.where(linear, L, -1)
    return expected


def _tree_lines(
    region: bytes, a: np.ndarray, newlines: np.ndarray, sizes: list[int], skeleton: bytes
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Every line of the section: its tree, field (-1: the Tree= line or a blank line), value start.

    Also returns how many bytes outside numbers the lines' 'key=' parts hold (for the character
    check), or None when every block is in model_to_string's layout with nothing but number bytes
    in its values (the common case, proven from ``skeleton``, the section without its number bytes
    but '\n'). Otherwise blocks in model_to_string's layout are checked vectorised, others line
    by line.
    """
    n = len(sizes)
    offsets = _tree_offsets(region, sizes)
    if region[-2:] != b"\n\n":
        raise Refused(f"tree {n - 1} is not followed by a blank line")
    # offsets[-1] is the section's end, after every line break: its entry is the line count.
    bounds = np.searchsorted(newlines, offsets)
    first_line = bounds[:-1]
    per_block = bounds[1:] - first_line
    line_block = np.repeat(np.arange(n), per_block)
    line_start = np.empty_like(newlines)
    line_start[0] = 0
    line_start[1:] = newlines[:-1] + 1
    line_no = np.arange(newlines.size) - first_line.take(line_block)

    layout = _LAYOUT_OF_LINES.take(np.minimum(per_block, _LAYOUT_OF_LINES.size - 1))
    if layout.min(initial=0) >= 0:
        row = _LAYOUT_BASE.take(layout).take(line_block) + line_no
        value_start = line_start + _ROW_VALUE_START.take(row)
        if _all_canonical(a, skeleton, layout, row, line_start, value_start, newlines):
            return line_block, _ROW_FIELD.take(row), value_start, None
    line_layout = layout.take(line_block)
    canonical = line_layout >= 0
    row = np.where(canonical, _LAYOUT_BASE[line_layout] + line_no, 0)
    idx = np.minimum(line_start[:, None] + np.arange(_WIDTH), a.size - 1)
    wrong = ((a[idx] != _PREFIX[row]) & _PREFIX_MASK[row]).any(axis=1)
    wrong |= _ROW_BLANK[row] & (newlines != line_start)
    slow = np.zeros(n, dtype=bool)
    slow[line_block[~canonical | wrong]] = True

    field = _ROW_FIELD[row]
    value_start = line_start + _ROW_VALUE_START[row]
    outside = int(_ROW_OUTSIDE[row][~slow[line_block]].sum())
    for t in np.flatnonzero(slow).tolist():
        lines = slice(int(first_line[t]), int(first_line[t] + per_block[t]))
        f, v, o = _block_lines_slow(region, line_start[lines], newlines[lines], t)
        field[lines], value_start[lines] = f, v
        outside += o
    return line_block, field, value_start, outside


def _tree_offsets(region: bytes, sizes: list[int]) -> np.ndarray:
    """The trees' offsets (and the section's end), once every tree i starts with the line 'Tree=i'
    (i in decimal, no leading zero) and ends with a line break where tree_sizes puts it.

    A loop over the trees rather than NumPy: a cold load pays for every distinct NumPy routine it
    touches, and the vectorised form needed a dozen of them for one ``startswith`` per tree.
    """
    offsets = [0]
    start, unended = 0, -1
    for t, size in enumerate(sizes):
        if not region.startswith(b"Tree=%d\n" % t, start):
            raise Refused(f"tree_sizes does not point at 'Tree={t}' (tree {t} should start at byte {start})")
        start += size
        offsets.append(start)
        if unended < 0 and region[start - 1] != 10:
            unended = t
    if unended >= 0:
        raise Refused("a tree does not end with a line break where tree_sizes says it ends")
    return np.array(offsets)


def _all_canonical(
    a: np.ndarray,
    skeleton: bytes,
    layout: np.ndarray,
    row: np.ndarray,
    line_start: np.ndarray,
    value_start: np.ndarray,
    newlines: np.ndarray,
) -> bool:
    """Whether every line is exactly its layout row's line: 'Tree=i' (checked by the caller), a
    'key=' followed by number bytes only, or empty.

    Why this suffices: with the number bytes but '\n' dropped, each field line must leave exactly
    its key's other bytes (the skeletons are equal line for line), and the key's own number bytes
    ('e') and its '=' must sit where the key puts them, inside the line. The '=' is then the
    line's last byte that is not a number byte (the key has one '=' and it ends the key's
    skeleton), so the bytes after it are number bytes, and the key's slots before it hold exactly
    as many other bytes as the key's skeleton has, in its order: the line starts with the key.
    """
    if skeleton != b"".join([_LAYOUT_SKELETON[k] for k in layout.tolist()]):
        return False
    # The key fits in its line (value start <= line end) and the pinned bytes are in place.
    if np.any(value_start > newlines):
        return False
    found = a.take(line_start[:, None] + _ROW_PIN_AT.take(row, axis=0), mode="clip")
    return bool(np.array_equal(found, _ROW_PIN_BYTE.take(row, axis=0)))


def _block_lines_slow(region: bytes, starts: np.ndarray, ends: np.ndarray, t: int) -> tuple[list, list, int]:
    """A block not in model_to_string's exact layout (LightGBM takes its fields in any order)."""
    fields, value_starts, outside = [-1], [int(starts[0]) + 5], _outside_value(b"Tree=")  # checked by the caller
    seen: set[int] = set()
    blank = False
    for s, e in zip(starts[1:].tolist(), ends[1:].tolist()):
        line = region[s:e]
        if not line:
            blank = True  # LightGBM stops reading the tree at the first blank line
            fields.append(-1)
            value_starts.append(s)
            continue
        if blank:
            raise Refused(f"tree {t} has a line after its blank line: {line[:40]!r}")
        key, sep, _ = line.partition(b"=")
        index = _TREE_KEYS_B.get(key) if sep else None
        if index is None:
            raise Refused(f"tree {t} has an unknown line {line[:40]!r}")
        if index in seen:
            raise Refused(f"tree {t} has {key.decode()} twice")
        seen.add(index)
        fields.append(index)
        value_starts.append(s + len(key) + 1)
        outside += _outside_value(key + b"=")
    if not blank:
        raise Refused(f"tree {t} is not followed by a blank line")
    return fields, value_starts, outside


def small_ints(
    region: bytes, spans: np.ndarray, key: str, lo: int, hi: int, trees: np.ndarray | None = None
) -> np.ndarray:
    """One small non-negative integer per tree (num_leaves, num_cat, is_linear): 1 to 9 digits."""
    (value,) = small_ints_of(region, spans, ((key, lo, hi),), trees)
    return value


def small_ints_of(
    region: bytes, spans: np.ndarray, fields: tuple[tuple[str, int, int], ...], trees: np.ndarray | None = None
) -> list[np.ndarray]:
    """:func:`small_ints` for several ``(key, lo, hi)`` fields at once (one pass over their digits)."""
    cols = spans[:, [K[key] for key, _, _ in fields]] if trees is None else spans[trees][:, [K[key] for key, _, _ in fields]]
    start = cols[:, :, 0].T.ravel()  # field-major
    width = cols[:, :, 1].T.ravel() - start
    a = np.frombuffer(region, dtype=np.uint8)
    ok = (width >= 1) & (width <= 9)
    value = np.zeros(start.size, dtype=np.int64)
    for k in range(int(width[ok].max(initial=0))):  # digit by digit, all trees at once
        inside = ok & (k < width)
        digit = a.take(start + k, mode="clip").astype(np.int64) - 48
        ok &= ~inside | ((digit >= 0) & (digit <= 9))
        value = np.where(inside, value * 10 + digit, value)
    n = cols.shape[0]
    out = []
    for f, (key, lo, hi) in enumerate(fields):
        part = slice(f * n, (f + 1) * n)
        if not ok[part].all():
            i = int(np.argmax(~ok[part]))
            tree = i if trees is None else int(trees[i])
            at, w = int(start[part][i]), int(width[part][i])
            raise Refused(f"tree {tree} has a malformed {key} {region[at : at + max(w, 0)][:20]!r}")
        i = first_outside(value[part], lo, hi)
        if i is not None:
            tree = i if trees is None else int(trees[i])
            raise Refused(f"tree {tree} has {key}={int(value[part][i])} (allowed {lo}..{hi})")
        out.append(value[part])
    return out


def field_values(region: bytes, spans: np.ndarray, key: str, trees: np.ndarray | None = None) -> list[bytes]:
    col = spans[:, K[key]] if trees is None else spans[trees, K[key]]
    return [region[s:e] for s, e in col.tolist()]


# More digits than this could overflow int64 while parsing; such (legal, zero-padded) values take
# the slow path, which parses exactly as before.
_MAX_FAST_DIGITS = 18


def parse_ints(
    region: bytes,
    spans: np.ndarray,
    keys: tuple[str, ...],
    trees: np.ndarray,
    per_tree: np.ndarray,
    lo: int = -INT32_MAX - 1,
    hi: int = INT32_MAX,
) -> np.ndarray:
    """Integer fields ``keys`` of ``trees``, one row per key (the trees' values concatenated); their
    lengths were checked.

    The values are parsed all at once: the bytes of every selected line's value (with its line
    break) are joined, cut at spaces and line breaks, and read digit position by digit position
    across all values.
    """
    total = int(per_tree[trees].sum())
    if total == 0:
        return np.zeros((len(keys), 0), dtype=np.int64)
    what = "/".join(keys)
    cols = spans[trees][:, [K[key] for key in keys]].transpose(1, 0, 2).reshape(-1, 2)  # key-major
    # Joined as bytes: on a cold cache this beats a NumPy gather, whose index arrays are eight
    # times the size of the bytes they gather.
    b = np.frombuffer(b"".join([region[start : end + 1] for start, end in cols.tolist()]), dtype=np.uint8)
    sep = b <= 32  # ' ' or '\n': the section holds no other byte below '+' (read_section)
    minus = b == 45
    first = np.empty_like(sep)  # a value's first byte: after a separator
    first[0] = True
    first[1:] = sep[:-1]
    # Digits, separators, and a '-' that starts a value and is followed by a digit; no empty value.
    if (
        not np.all(((b - 48) < 10) | sep | (minus & first))
        or np.any(first & sep)
        or np.any(minus[:-1] & sep[1:])
    ):
        raise Refused(f"a tree's {what} holds a value that is not an integer")
    ends = np.flatnonzero(sep)
    if ends.size != total * len(keys):
        raise Refused(f"a tree's {what} holds a value that is not an integer")
    begins = np.empty_like(ends)
    begins[0] = 0
    begins[1:] = ends[:-1] + 1
    negative = minus.take(begins)
    begins += negative
    width = ends - begins
    longest = int(width.max())
    if longest > _MAX_FAST_DIGITS:
        array = _parse_ints_slow(region, spans, keys, trees, total, what)
    else:
        # Digit by digit across all values (int32 holds up to 9 digits and is faster).
        kind = np.int32 if longest <= 9 else np.int64
        array = b.take(begins).astype(kind) - 48
        for k in range(1, longest):
            digit = b.take(begins + k, mode="clip").astype(kind) - 48
            array = np.where(width > k, array * 10 + digit, array)
        array = (array * (1 - 2 * negative.view(np.int8))).astype(np.int64)  # the sign
    if first_outside(array, lo, hi) is not None:
        raise Refused(f"a tree's {what} has a value outside [{lo}, {hi}]")
    return array.reshape(len(keys), total)


def _parse_ints_slow(region: bytes, spans: np.ndarray, keys: tuple[str, ...], trees: np.ndarray, total: int, what: str) -> np.ndarray:
    """parse_ints for values of more than _MAX_FAST_DIGITS digits (zero-padded or out of range)."""
    joined = b" ".join([piece for key in keys for piece in field_values(region, spans, key, trees)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = np.fromstring(joined, dtype=np.int64, sep=" ")
    if array.size != total * len(keys):
        raise Refused(f"a tree's {what} holds a value that is not an integer")
    return array


def check_numbers(section: Section, expected: np.ndarray) -> np.ndarray:
    """Every value is a list of plain decimal numbers of the field's length; returns the lengths.

    LightGBM aborts (SIGABRT) on a count mismatch in threshold/leaf_value/leaf_weight and on a
    number it cannot parse in any field ("-", ".", "e5", "1--2"), so: a value starts with a digit
    or '-'; '-' and '+' are followed by a digit; a space is followed by a digit or '-' (so no empty
    values and no trailing space). The characters were checked by read_section.
    """
    region, a, pos, c, is_newline, newline_at, newlines, line_block, field, value_start, kv, spans = section
    loose = _LOOSE[field[kv]]
    if loose.any():
        # leaf_features/leaf_coeff (linear trees) are written with double spaces; skip their bytes.
        line_of = np.cumsum(is_newline) - is_newline
        skip_line = np.zeros(newlines.size, dtype=bool)
        skip_line[kv[loose]] = True
        keep = ~skip_line[line_of] | is_newline
        pos, c = pos[keep], c[keep]
        is_newline = c == 10
        newline_at = np.flatnonzero(is_newline)
        kv = kv[~loose]
    # The section ends with a blank line, so every byte but the last '\n' has a next byte.
    inner = pos[:-1]
    nxt = a[1:].take(inner)  # the byte after each separator or sign
    cc = c[:-1]
    bad = (nxt - 48) >= 10  # the next byte is not a digit (uint8 arithmetic wraps)
    bad &= cc != 10  # '\n' is followed by the next line's name, matched already
    bad &= (cc != 32) | (nxt != 45)  # ' ' may also be followed by '-'
    if bad.any():
        p = int(inner[int(np.argmax(bad))])
        raise Refused(f"{_field_at(spans, p)} has a malformed number near {region[max(p - 12, 0) : p + 12]!r}")

    starts, ends = value_start[kv], newlines[kv]
    nonempty = ends > starts
    first = a[np.minimum(starts, a.size - 1)]
    bad_start = nonempty & ((first - 48) >= 10) & (first != 45)
    if bad_start.any():
        raise Refused(f"{_field_at(spans, int(starts[int(np.argmax(bad_start))]))} does not start with a number")

    at = (line_block.take(kv), field.take(kv))
    want = expected[at]
    # Spaces on each line: the specials from just after the previous line's '\n' to its own.
    line_first = newline_at[:-1] + 1
    per_line = np.add.reduceat(c == 32, np.concatenate(([0], line_first)), dtype=np.int32)
    got = per_line[kv] + nonempty
    check = want >= 0
    if not np.array_equal(got[check], want[check]):
        i = int(np.flatnonzero(check & (got != want))[0])
        raise Refused(f"{_field_at(spans, int(starts[i]))} has {int(got[i])} values, expected {int(want[i])}")
    counts = np.full(expected.shape, -1, dtype=np.int64)
    counts[at] = got
    return counts


def _field_at(spans: np.ndarray, position: int) -> str:
    """'tree T field' for a byte position, for error messages."""
    tree = max(int(np.searchsorted(spans[:, 0, 0], position, side="right")) - 1, 0)
    inside = np.flatnonzero((spans[tree, :, 0] <= position) & (position <= spans[tree, :, 1]))
    return f"tree {tree} {TREE_KEYS[int(inside[0])] if inside.size else 'line'}"
