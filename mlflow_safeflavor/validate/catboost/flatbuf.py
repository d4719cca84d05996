"""A minimal, columnar FlatBuffers reader in which every offset is checked before it is followed.

CatBoost verifies the model core with ``flatbuffers::Verifier`` but reads its CTR tables with a bare
``GetRoot`` (ctr_value_table.cpp: "TODO(kirillovs): add length validation"), so this reader applies
the verifier's rules itself, plus the ones a FlatBufferBuilder never breaks:

* every buffer starts 4-byte aligned in the file (CatBoost writes sizes that keep it so); the root
  offset, every table, vtable, vector and string lies inside its buffer and is aligned to its
  scalar size relative to the buffer start, as the verifier checks;
* a vtable's size is even and at least 4, a table's inline size at least 4, and every field read
  lies inside its table's inline size;
* an offset is non-zero and points forward inside the buffer (FlatBuffers offsets are unsigned, so a
  chain of them cannot cycle, and the schema read here is not recursive: depth is bounded);
* a vector's element count times its element size fits in the bytes that remain; a string is
  NUL-terminated after its length;
* no two objects overlap unless they are the same object (the builder shares vtables, CatBoost's
  serializer shares CTR bases — always by pointing at the same offset): see :meth:`File.check_disjoint`.

It is columnar: a :class:`Tables` holds N tables of one type (the float features, the CTR features,
the CTR value tables of every buffer at once) and reads a field of all of them with a few NumPy
operations, so the cost does not grow with the number of features or tables. Anything malformed
raises :class:`Bad` with a short description.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

MAX_BUFFER = 2**31 - 1  # FLATBUFFERS_MAX_BUFFER_SIZE

_I64 = np.int64
_NONE = np.empty(0, _I64)
_SLOTS = 4 + 2 * np.arange(64, dtype=_I64)  # vtable positions of field slots
_minimum, _maximum = np.minimum, np.maximum
_SCALAR = {"int": struct.Struct("<i"), "byte": struct.Struct("<b"), "bool": struct.Struct("<B"),
           "float": struct.Struct("<f"), "double": struct.Struct("<d")}
_U32 = struct.Struct("<I")


class Bad(Exception):
    """The bytes are not what CatBoost writes, in a way CatBoost would not catch (message says why)."""


class Unsupported(Bad):
    """A well-formed model of a kind this validator does not cover (text or embedding features)."""


def _refuse(bad: np.ndarray, pos: np.ndarray, what: str) -> None:
    if bad.any():
        raise Bad(f"{what} (at byte {int(pos[int(bad.argmax())])})")


def ragged(start: np.ndarray, count: np.ndarray, step: int) -> np.ndarray:
    """Positions ``start[i] + step * j`` for ``j < count[i]``, concatenated over ``i``."""
    total = int(count.sum())
    if total == 0:
        return np.empty(0, _I64)
    first = count.cumsum() - count
    return (start - step * first).repeat(count) + step * np.arange(total, dtype=_I64)


class File:
    """The whole file as aligned NumPy views, plus every object span read from it."""

    def __init__(self, data: bytes | memoryview):
        self.raw = data if isinstance(data, bytes) else bytes(data)  # for slicing keys cheaply
        self.data = memoryview(self.raw)
        n = len(self.data)
        self.size = n
        self.u8 = np.frombuffer(self.data, np.uint8)
        self.i8 = self.u8.view(np.int8)
        self.u16 = np.frombuffer(self.data, "<u2", count=n // 2)
        self.u32 = np.frombuffer(self.data, "<u4", count=n // 4)
        self.i32 = self.u32.view("<i4")
        self.f32 = self.u32.view("<f4")
        self.spans: list[tuple[np.ndarray, np.ndarray]] = []
        self.scalar_spans: list[tuple[int, int]] = []  # objects read by Table, as Python ints

    def root(self, lo: int, hi: int, what: str) -> Table:
        """The root table of the buffer ``[lo, hi)``."""
        if lo & 3 or not 8 <= hi - lo <= MAX_BUFFER or hi > self.size:
            raise Bad(f"{what}: the buffer is misaligned, too short or outside the file")
        (off,) = _U32.unpack_from(self.data, lo)
        if off == 0 or off >= hi - lo:
            raise Bad(f"{what}: the root offset points outside the buffer")
        return Table(self, lo + off, lo, hi, what)

    def roots(self, lo: np.ndarray, hi: np.ndarray, sizes: tuple[int, ...], what: str) -> Tables:
        """The root tables of the buffers ``[lo[i], hi[i])``."""
        lo, hi = lo.astype(_I64), hi.astype(_I64)
        _refuse((lo & 3 != 0) | (hi - lo < 8) | (hi - lo > MAX_BUFFER) | (hi > self.size), lo,
                f"{what}: a buffer is misaligned, too short or outside the file")
        at = lo
        off = self.u32[at >> 2].astype(_I64)
        _refuse((off == 0) | (off >= hi - at), at, f"{what}: the root offset points outside the buffer")
        return Tables(self, at + off, lo, hi, sizes, what)

    def check_disjoint(self) -> None:
        """Refuse objects that overlap without being the same object (same start and end)."""
        spans = self.spans + [tuple(np.array(self.scalar_spans, _I64).reshape(-1, 2).T)]
        keys = (np.concatenate([s for s, _ in spans]) << 32) | np.concatenate([e for _, e in spans])
        keys = np.sort(keys, kind="stable")  # spans come in sorted runs, which stable sorting merges fastest
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        starts, ends = keys >> 32, keys & 0xFFFFFFFF
        bad = starts[1:] < np.maximum.accumulate(ends[:-1])
        if bad.any():
            raise Bad(f"has two objects that overlap (at byte {int(starts[1:][bad.argmax()])}); "
                      "a FlatBuffer writer never produces that")

    def bytes_of(self, start: np.ndarray, count: np.ndarray) -> list[memoryview]:
        return [self.data[s : s + c] for s, c in zip(start.tolist(), count.tolist())]


class Table:
    """One table, read with plain Python integers (the same rules as :class:`Tables`)."""

    __slots__ = ("file", "pos", "lo", "hi", "tsize", "fields", "what")

    def __init__(self, file: File, pos: int, lo: int, hi: int, what: str):
        self.file, self.pos, self.lo, self.hi, self.what = file, pos, lo, hi, what
        data = file.data
        if pos & 3 or pos < lo or pos + 4 > hi:
            raise Bad(f"{what}: a table is misaligned or outside its buffer (at byte {pos})")
        vt = pos - _SCALAR["int"].unpack_from(data, pos)[0]
        if vt < lo or vt & 1 or vt + 4 > hi:
            raise Bad(f"{what}: a table's vtable is outside its buffer (at byte {pos})")
        vsize, tsize = struct.unpack_from("<HH", data, vt)
        if vsize < 4 or vsize & 1 or vt + vsize > hi or tsize < 4 or pos + tsize > hi:
            raise Bad(f"{what}: a table or its vtable declares a size past the end of its buffer (at byte {pos})")
        self.fields = struct.unpack_from(f"<{(vsize - 4) >> 1}H", data, vt + 4)
        self.tsize = tsize
        file.scalar_spans += ((vt, vt + vsize), (pos, pos + tsize))

    def has(self, slot: int) -> bool:
        return slot < len(self.fields) and self.fields[slot] != 0

    def _at(self, slot: int, size: int, name: str) -> int:
        fo = self.fields[slot] if slot < len(self.fields) else 0
        if fo and (fo < 4 or fo + size > self.tsize or (self.pos + fo - self.lo) % size):
            raise Bad(f"{self.what}: field {name} lies outside its table or is misaligned (at byte {self.pos})")
        return self.pos + fo if fo else 0

    def scalar(self, slot: int, kind: str, default, name: str):
        fmt = _SCALAR[kind]
        at = self._at(slot, fmt.size, name)
        return fmt.unpack_from(self.file.data, at)[0] if at else default

    def _offset(self, slot: int, name: str) -> int:
        at = self._at(slot, 4, name)
        if not at:
            return 0
        (off,) = _U32.unpack_from(self.file.data, at)
        if off == 0 or off >= self.hi - at:
            raise Bad(f"{self.what}: the offset of field {name} points outside its buffer (at byte {at})")
        return at + off

    def table(self, slot: int, name: str) -> Table | None:
        at = self._offset(slot, name)
        return Table(self.file, at, self.lo, self.hi, f"{self.what}, field {name}") if at else None

    def _vector(self, slot: int, elem: int, align: int, name: str) -> tuple[int, int]:
        """(first element position, count) of a vector field; (0, 0) when absent."""
        at = self._offset(slot, name)
        if not at:
            return 0, 0
        if at & 3 or at + 4 > self.hi:
            raise Bad(f"{self.what}: vector {name} is misaligned or outside its buffer (at byte {at})")
        (count,) = _U32.unpack_from(self.file.data, at)
        start = at + 4
        if count * elem > self.hi - start or (align > 4 and count and (start - self.lo) % align):
            raise Bad(f"{self.what}: vector {name} is misaligned or longer than its buffer (at byte {at})")
        self.file.scalar_spans.append((at, start + count * elem))
        return start, count

    def array(self, slot: int, dtype, name: str, align: int = 4) -> np.ndarray:
        """A vector of scalars or structs as a zero-copy NumPy view (empty when absent)."""
        dt = np.dtype(dtype)
        start, count = self._vector(slot, dt.itemsize, align, name)
        return np.frombuffer(self.file.data, dt, count=count, offset=start) if count else np.empty(0, dt)

    def count(self, slot: int, elem: int, name: str) -> int:
        return self._vector(slot, elem, 4, name)[1]

    def string(self, slot: int, name: str) -> str | None:
        at = self._offset(slot, name)
        return self._string_at(at, name) if at else None

    def _string_at(self, at: int, name: str) -> str:
        if at & 3 or at + 4 > self.hi:
            raise Bad(f"{self.what}: string {name} is misaligned or outside its buffer (at byte {at})")
        (count,) = _U32.unpack_from(self.file.data, at)
        start = at + 4
        if count > self.hi - start:
            raise Bad(f"{self.what}: string {name} is misaligned or longer than its buffer (at byte {at})")
        end = start + count
        if end >= self.hi or self.file.data[end] != 0:
            raise Bad(f"{self.what}: string {name} is not NUL-terminated inside its buffer (at byte {at})")
        self.file.scalar_spans.append((at, end + 1))
        try:
            return bytes(self.file.data[start:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise Bad(f"{self.what}: string {name} is not valid UTF-8") from None

    def _targets(self, slot: int, name: str) -> np.ndarray:
        """Where each element of a vector of offsets (tables or strings) points."""
        start, count = self._vector(slot, 4, 4, name)
        if not count:
            return _NONE
        at = start + 4 * np.arange(count, dtype=_I64)
        off = self.file.u32[start >> 2 : (start >> 2) + count].astype(_I64)
        _refuse((off == 0) | (off >= self.hi - at), at,
                f"{self.what}: an element of vector {name} points outside its buffer")
        return at + off

    def tables(self, slot: int, sizes: tuple[int, ...], name: str) -> Tables:
        """The vector of tables in field ``slot``, as one :class:`Tables`."""
        at = self._targets(slot, name)
        n = len(at)
        return Tables(self.file, at, np.full(n, self.lo, _I64), np.full(n, self.hi, _I64), sizes, f"{self.what}, {name}")

    def table_list(self, slot: int, name: str) -> list[Table]:
        """The vector of tables in field ``slot``, one :class:`Table` each (for short vectors)."""
        what = f"{self.what}, {name}"
        return [Table(self.file, at, self.lo, self.hi, what) for at in self._targets(slot, name).tolist()]

    def strings(self, slot: int, name: str) -> list[str]:
        """The vector of strings in field ``slot``, decoded (for short vectors)."""
        return [self._string_at(at, name) for at in self._targets(slot, name).tolist()]


@functools.lru_cache(maxsize=None)
def _schema(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vtable positions, inline sizes and alignment masks of a table type's field slots."""
    size = np.array(sizes, _I64)
    return _SLOTS[: len(sizes)], size, size - 1


class Tables:
    """N tables of one type: positions, enclosing buffer bounds, inline sizes and field offsets.

    Checks are fused: every condition is computed on all rows (reads kept in bounds by clamping a
    position where an earlier condition failed) and tested with one ``any``.
    """

    __slots__ = ("file", "pos", "lo", "hi", "tsize", "fo", "what")

    def __init__(self, file: File, pos: np.ndarray, lo: np.ndarray, hi: np.ndarray, sizes: tuple[int, ...], what: str):
        """``sizes``: the inline size of each field slot of this table type (1, 4 or 8 bytes)."""
        self.file, self.pos, self.lo, self.hi, self.what = file, pos, lo, hi, what
        nslots = len(sizes)
        if not len(pos):
            self.tsize, self.fo = _NONE, np.zeros((0, nslots), _I64)
            return
        # Positions clamped into the buffer (and aligned) before reading; any clamping is an error.
        safe = _minimum(_maximum(pos, lo), hi - 4) & ~3
        vt = safe - file.i32[safe >> 2]
        vts = _minimum(_maximum(vt, lo), hi - 4) & ~1
        vsize, tsize = file.u16[vts >> 1], file.u16[(vts >> 1) + 1]
        bad = ((safe != pos) | (vts != vt) | (vsize < 4) | (vsize & 1 != 0) | (vts + vsize > hi) | (tsize < 4)
               | (pos + tsize > hi))
        if bad.any():
            raise Bad(f"{what}: a table or its vtable is misaligned or outside its buffer "
                      f"(at byte {int(pos[int(bad.argmax())])})")
        # Field offsets (0 = absent); every field the vtable names lies inside the table and is aligned
        # to its size (tables are 4-aligned, so a field's alignment is that of its offset).
        slots, size, mask = _schema(sizes)
        has = slots < vsize[:, None]
        fo = np.where(has, file.u16[np.where(has, vts[:, None] + slots, 0) >> 1], 0)
        bad = (fo != 0) & ((fo < 4) | (fo + size > tsize[:, None]) | (fo & mask != 0))
        if bad.any():
            row, slot = np.argwhere(bad)[0]
            raise Bad(f"{what}: field {slot} lies outside its table or is misaligned (at byte {int(pos[row])})")
        self.fo, self.tsize = fo, tsize
        file.spans.append((vts, vts + vsize))
        file.spans.append((pos, pos + tsize))

    def __len__(self) -> int:
        return len(self.pos)

    @classmethod
    def concat(cls, parts: list[Tables]) -> Tables:
        """One column from several already-checked columns of the same table type."""
        if len(parts) == 1:
            return parts[0]
        out = cls.__new__(cls)
        out.file, out.what = parts[0].file, parts[0].what
        for name in ("pos", "lo", "hi", "tsize", "fo"):
            setattr(out, name, np.concatenate([getattr(p, name) for p in parts]))
        return out

    def _at(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows where field ``slot`` is present, and its position (0 where absent); checked at construction."""
        fo = self.fo[:, slot]
        present = fo > 0
        return present, np.where(present, self.pos + fo, 0)

    def floats(self, slots: tuple[int, ...], defaults: tuple[float, ...]) -> np.ndarray:
        """Several float32 fields of every table at once: an (N, len(slots)) array, defaults where absent."""
        fo = self.fo[:, list(slots)]
        present = fo != 0
        values = self.file.f32[np.where(present, self.pos[:, None] + fo, 0) >> 2]
        return np.where(present, values, np.array(defaults, np.float32))

    def scalar(self, slot: int, kind: str, default, name: str) -> np.ndarray:
        """One scalar field of every table (``int``, ``byte``, ``bool``, ``float``), default where absent."""
        if not len(self.pos):
            return np.empty(0, np.float32 if kind == "float" else _I64)
        f = self.file
        present, at = self._at(slot)
        if kind in ("byte", "bool"):
            values = (f.u8 if kind == "bool" else f.i8)[at]
        else:
            values = (f.f32 if kind == "float" else f.i32)[at >> 2]
        return np.where(present, values, default)

    def offsets(self, slot: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows where an offset field is present, and where each points."""
        if not len(self.pos):
            return _NONE, _NONE
        fo = self.fo[:, slot]
        rows = fo.nonzero()[0]
        at, hi = self.pos[rows] + fo[rows], self.hi[rows]
        off = self.file.u32[at >> 2].astype(_I64)
        _refuse((off == 0) | (off >= hi - at), at, f"{self.what}: the offset of field {name} points outside its buffer")
        return rows, at + off

    def table(self, slot: int, sizes: tuple[int, ...], name: str) -> tuple[np.ndarray, Tables]:
        rows, target = self.offsets(slot, name)
        return rows, Tables(self.file, target, self.lo[rows], self.hi[rows], sizes, f"{self.what}, field {name}")

    def vector(self, slot: int, elem: int, name: str, align: int = 4) -> Vectors:
        rows, target = self.offsets(slot, name)
        return Vectors(self.file, rows, target, self.lo[rows], self.hi[rows], elem, align, f"{self.what}, vector {name}")

    def strings(self, slot: int, name: str) -> Strings:
        """A vector of strings per row, as one :class:`Strings` (``rows`` holds each one's owner row)."""
        return Strings.of(self.vector(slot, 4, name), f"{self.what}, {name}")

    def string(self, slot: int, name: str) -> Strings:
        rows, target = self.offsets(slot, name)
        return Strings(self.file, rows, target, self.lo[rows], self.hi[rows], f"{self.what}, string {name}")


class Vectors:
    """One vector per present row: ``rows``, first element positions ``start`` and ``count``."""

    def __init__(self, file: File, rows, at, lo, hi, elem: int, align: int, what: str):
        self.file, self.rows, self.lo, self.hi, self.elem = file, rows, lo, hi, elem
        if not len(rows):
            self.start = self.count = _NONE
            return
        misplaced = (at & 3 != 0) | (at + 4 > hi)
        count = file.u32[np.where(misplaced, lo, at) >> 2].astype(_I64)
        start = at + 4
        bad = misplaced | (count * elem > hi - start)
        if align > 4:
            bad |= (count > 0) & ((start - lo) % align != 0)
        _refuse(bad, at, f"{what}: a vector is misaligned or declares more elements than its buffer holds")
        self.start, self.count = start, count
        file.spans.append((at, start + count * elem))

    def targets(self, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For a vector of offsets: (owner row, target, buffer lo, buffer hi) of every element."""
        if not self.count.sum():
            return _NONE, _NONE, _NONE, _NONE
        at = self.positions()
        lo, hi = self.lo.repeat(self.count), self.hi.repeat(self.count)
        off = self.file.u32[at >> 2].astype(_I64)
        _refuse((off == 0) | (off >= hi - at), at, f"{what}: an element points outside its buffer")
        return self.rows.repeat(self.count), at + off, lo, hi

    def counts(self, n_rows: int) -> np.ndarray:
        """Element count per row of the parent (0 where the vector is absent)."""
        out = np.zeros(n_rows, _I64)
        out[self.rows] = self.count
        return out

    def positions(self) -> np.ndarray:
        return ragged(self.start, self.count, self.elem)

    def values(self, dtype: str) -> np.ndarray:
        """All elements, concatenated (4-byte scalars: ``<i4``, ``<u4``, ``<f4``)."""
        view = {"<i4": self.file.i32, "<u4": self.file.u32, "<f4": self.file.f32}[dtype]
        return view[self.positions() >> 2]


class Strings(Vectors):
    """Strings: byte vectors that must be NUL-terminated inside their buffer."""

    def __init__(self, file: File, rows, at, lo, hi, what: str):
        super().__init__(file, rows, at, lo, hi, 1, 1, what)
        self.what = what
        if not len(rows):
            return
        end = self.start + self.count
        _refuse((end >= hi) | (file.u8[np.minimum(end, file.size - 1)] != 0), at,
                f"{what}: a string is not NUL-terminated inside its buffer")
        file.spans[-1] = (at, end + 1)

    @classmethod
    def of(cls, vec: Vectors, what: str) -> Strings:
        """The strings a vector of offsets points at (``rows``: the owner row of each)."""
        owner, at, lo, hi = vec.targets(what)
        return cls(vec.file, owner, at, lo, hi, what)

    def check_utf8(self) -> None:
        """Every string is valid UTF-8 (checked in one pass: they are joined by NUL, itself valid)."""
        try:
            b"\0".join(self.file.bytes_of(self.start, self.count)).decode("utf-8")
        except UnicodeDecodeError:
            raise Bad(f"{self.what} is not valid UTF-8") from None
