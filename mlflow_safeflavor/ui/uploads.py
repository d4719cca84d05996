"""Receive a multipart upload straight into the workspace, under our names and a byte cap.

Starlette's ``request.form()`` would spool files of any size and keep the client's file name; this
reads the body with python-multipart's streaming parser instead, so that:

- the request is refused before any byte is written when its ``Content-Length`` is over the cap,
  and while streaming as soon as the running total is (chunked bodies carry no length);
- each part's name, file name and content type are judged when its headers end, before its data:
  only the fields ``file`` (``.pkl``/``.pickle``/``.joblib``) and ``sample``
  (``.csv``/``.json``/``.parquet``/``.npy``) are accepted, a file name must be a plain name (no
  ``/``, ``\\``, ``:`` or control characters), and the part's content type must fit its extension;
- the data goes to ``model<ext>`` / ``sample<ext>`` (the extension from our own table) in a fresh
  0700 directory, opened ``O_EXCL|O_NOFOLLOW`` with mode 0600 — the client's name is kept only
  as text to show on the page;
- on any refusal, the partial directory is deleted before the answer is sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart < 0.0.13 names its module "multipart"
    from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]

from mlflow_safeflavor.ui.workspace import StoredFile, Workspace, private_file

_GENERIC = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_PICKLE_TYPES = _GENERIC | {"application/x-pickle", "application/pickle", "application/python-pickle", "application/x-python-pickle"}
# extension -> (name we store it under, content types a browser may send for it)
PICKLE_KINDS = {ext: (f"model{ext}", _PICKLE_TYPES) for ext in (".pkl", ".pickle", ".joblib")}
SAMPLE_KINDS = {
    ".csv": ("sample.csv", _GENERIC | {"text/csv", "application/csv", "text/plain", "text/comma-separated-values", "application/vnd.ms-excel"}),
    ".json": ("sample.json", _GENERIC | {"application/json", "text/json", "text/plain"}),
    ".parquet": ("sample.parquet", _GENERIC | {"application/vnd.apache.parquet", "application/x-parquet", "application/parquet"}),
    ".npy": ("sample.npy", _GENERIC | {"application/x-npy", "application/npy"}),
}
FIELDS = {"file": PICKLE_KINDS, "sample": SAMPLE_KINDS}
# After a refusal the rest of the body is read and dropped (up to this much) so the client gets
# the answer instead of a reset connection.
DRAIN_LIMIT = 64 * 1024 * 1024


class UploadRefused(Exception):
    """A request body the page does not accept (an upload, or a JSON body): HTTP ``status``, an
    error code and a message for the person sending it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Received:
    """An upload that arrived whole: its id, directory and files by field name."""

    id: str
    dir: Path
    files: dict[str, StoredFile]


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.4g} MiB"


def too_large(cap: int) -> UploadRefused:
    """The refusal for a body over ``cap`` bytes."""
    return UploadRefused(
        413, "REQUEST_TOO_LARGE",
        f"the upload is over the {_mb(cap)} cap of this page; nothing was kept. Raise it with "
        "`mlflow-safeflavor ui --max-upload-mb N` (or MLFLOW_SAFEFLAVOR_UI_MAX_UPLOAD_MB) if the "
        "model is legitimately that large.",
    )


def check_file_name(raw: str, kinds: dict[str, Any], field_name: str) -> str:
    """The client's file name if it is a plain name with an accepted extension; else UploadRefused."""
    if len(raw) > 255 or any(c in raw for c in "/\\:") or any(ord(c) < 32 or ord(c) == 127 for c in raw) or raw.strip(".") == "":
        shown = raw[:80].encode("unicode_escape").decode("ascii")
        raise UploadRefused(
            400, "BAD_FILE_NAME",
            f"the file name {shown!r} looks like a path; send a plain file name such as model.pkl "
            "(file names are only shown on the page, never used on disk).",
        )
    stem, ext = os.path.splitext(raw)
    if not stem or ext.lower() not in kinds:
        accepted = ", ".join(kinds)
        what = "a pickle" if field_name == "file" else "sample rows"
        raise UploadRefused(415, "UNSUPPORTED_MEDIA_TYPE",
                            f"{raw[:80]!r} is not {what} this page reads: the file name must end in {accepted}.")
    return raw


class _Parts:
    """The parser callbacks: one part at a time, judged at its headers, written as it streams."""

    def __init__(self, upload_dir: Path, fields: dict[str, dict[str, Any]], text_fields: frozenset[str]) -> None:
        self.dir, self.fields, self.text_fields = upload_dir, fields, text_fields
        self.files: dict[str, StoredFile] = {}
        self.texts: dict[str, str] = {}
        self._headers: dict[str, bytes] = {}
        self._field, self._value = b"", b""
        self._out: BinaryIO | None = None
        self._current: StoredFile | None = None
        self._text_name: str | None = None
        self._text = bytearray()
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end, "on_end": self._all_done,
        }

    def _begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""
        self._current, self._text_name, self._text = None, None, bytearray()

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", b"").decode("latin-1"))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadRefused(400, "BAD_REQUEST", "a multipart part has no form-data name.")
        name = params[b"name"].decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            if name not in self.text_fields or name in self.texts:
                raise UploadRefused(400, "BAD_REQUEST", f"unexpected form field {name[:40]!r}.")
            self._text_name = name
            return
        raw = filename.decode("utf-8", "replace")
        if name not in self.fields or name in self.files:
            raise UploadRefused(400, "BAD_REQUEST", f"unexpected file field {name[:40]!r} (send the pickle as 'file', sample rows as 'sample').")
        if raw == "":
            return  # a file input left empty: browsers still send the part, with no name and no data
        kinds = self.fields[name]
        display = check_file_name(raw, kinds, name)
        ext = os.path.splitext(raw)[1].lower()
        stored_name, types = kinds[ext]
        ctype = parse_options_header(self._headers.get("content-type", b"").decode("latin-1"))[0].decode("latin-1")
        if ctype not in types:
            raise UploadRefused(
                415, "UNSUPPORTED_MEDIA_TYPE",
                f"{display[:80]!r} was sent as {ctype[:60]!r}, which is not a type for {ext} files "
                f"(expected one of: {', '.join(sorted(t for t in types if t))}).",
            )
        path = self.dir / stored_name
        self._out = os.fdopen(private_file(path), "wb")
        self._current = StoredFile(field=name, path=path, display=display, size=0, content_type=ctype or "application/octet-stream")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None and self._current is not None:
            self._out.write(data[start:end])
            self._current.size += end - start
        elif self._text_name is not None:
            self._text += data[start:end]
            if len(self._text) > 4096:
                raise UploadRefused(400, "BAD_REQUEST", f"form field {self._text_name!r} is over 4096 bytes.")

    def _end(self) -> None:
        if self._out is not None and self._current is not None:
            self._out.close()
            self.files[self._current.field] = self._current
        elif self._text_name is not None:
            self.texts[self._text_name] = self._text.decode("utf-8", "replace")
        self._out, self._current, self._text_name = None, None, None

    def _all_done(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def receive(
    request: Any,
    workspace: Workspace,
    *,
    cap: int,
    required: str = "file",
    fields: dict[str, dict[str, Any]] = FIELDS,
    text_fields: frozenset[str] = frozenset(),
) -> tuple[Received, dict[str, str]]:
    """Stream a ``multipart/form-data`` request into a new upload directory.

    Returns the upload and its text fields; raises UploadRefused (after deleting whatever was
    written) for a body that is too large, malformed, missing ``required``, or carrying a part
    this page does not accept.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadRefused(415, "UNSUPPORTED_MEDIA_TYPE",
                            "send the file as multipart/form-data (a form upload with a 'file' field).")
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else None
    if declared is not None and declared > cap:
        if declared <= cap + DRAIN_LIMIT:
            async for _ in request.stream():
                pass
        raise too_large(cap)
    upload_id, upload_dir = workspace.new_upload_dir()
    parts = _Parts(upload_dir, fields, text_fields)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    refusal: UploadRefused | None = None
    total = drained = 0
    try:
        async for chunk in request.stream():
            if refusal is not None:
                drained += len(chunk)
                if drained > DRAIN_LIMIT:
                    break
                continue
            total += len(chunk)
            try:
                if total > cap:
                    raise too_large(cap)
                parser.write(chunk)
            except UploadRefused as exc:
                refusal = exc
            except Exception as exc:  # the parser's own errors: a malformed body
                refusal = UploadRefused(400, "BAD_REQUEST", f"malformed multipart body ({type(exc).__name__}).")
            if refusal is not None:
                parts.close()
                workspace.remove(upload_dir)
        if refusal is None:
            try:
                parser.finalize()
            except Exception as exc:
                refusal = UploadRefused(400, "BAD_REQUEST", f"malformed multipart body ({type(exc).__name__}).")
        if refusal is None:
            if not parts.ended:
                refusal = UploadRefused(400, "BAD_REQUEST", "the multipart body ended early (incomplete upload).")
            elif required not in parts.files:
                refusal = UploadRefused(400, "BAD_REQUEST", "choose a .pkl, .pickle or .joblib file to upload.")
    except BaseException:
        parts.close()
        workspace.remove(upload_dir)
        raise
    if refusal is not None:
        parts.close()
        workspace.remove(upload_dir)
        raise refusal
    return Received(upload_id, upload_dir, parts.files), parts.texts
