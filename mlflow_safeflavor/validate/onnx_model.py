"""Structural checks of an ONNX export before ``onnx.checker`` and before onnxruntime sees it.

An ONNX file is data, not code, but three things in it reach outside the graph: external data
(a tensor whose bytes live in a file named by a path — onnxruntime resolves it relative to the
model or the working directory, a known traversal vector), custom operator domains (which only
run if someone registered a library for them; we never do, and an unknown domain is not what our
converters write), and declared tensor sizes (a tensor may claim 10^12 elements while carrying a
few bytes; a runtime that trusts the claim allocates it). All three are checked here, on the
parsed protobuf, recursively through subgraphs and model-local functions; then ``onnx.checker``
runs on the in-memory proto (never on a path, which would resolve external data).
"""

from __future__ import annotations

from typing import Any, Iterator

from mlflow_safeflavor.errors import MalformedArtifactError

ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Our converters write a few MB for large forests; a declared tensor beyond this is refused.
MAX_TENSOR_BYTES = 1 << 30
MAX_TENSOR_ELEMENTS = 1 << 28
MAX_NODES = 1_000_000
MAX_DEPTH = 8

# TensorProto.DataType -> bytes per element (0 = variable length, e.g. strings).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 0, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
                  14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}


def _refuse(path: str, problem: str) -> MalformedArtifactError:
    """The refusal, with ``problem`` (the check's own sentence) kept for the save-time message."""
    exc = MalformedArtifactError(
        f"{path}: {problem}. mlflow_safeflavor never writes such an ONNX export; the file was "
        "altered or produced elsewhere. Do not serve it: re-save the model (or save it with "
        "onnx=False and serve the checkpoint).",
        path=path,
    )
    exc.problem = problem
    return exc


def parse(data: bytes, *, path: str) -> Any:
    """Parse ``data`` as an ``onnx.ModelProto`` and run every check; return the proto.

    Raises MalformedArtifactError naming the file and the problem: not a protobuf, external
    data, a custom domain or model-local function, a declared tensor size that does not match its
    data or exceeds the caps, too many nodes or subgraph levels, or an ``onnx.checker`` failure.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _refuse(path, f"not a valid ONNX protobuf ({type(exc).__name__})") from None
    if not model.HasField("graph"):
        raise _refuse(path, "the ONNX model has no graph")
    if len(model.functions):
        raise _refuse(path, f"the model defines {len(model.functions)} local function(s) (custom operators)")
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise _refuse(path, f"the model imports the operator domain {opset.domain!r} (custom operators)")
    nodes = 0
    for node, tensor in _walk(model.graph, depth=0, path=path):
        if node is not None:
            nodes += 1
            if nodes > MAX_NODES:
                raise _refuse(path, f"more than {MAX_NODES} nodes")
            if node.domain not in ALLOWED_DOMAINS:
                raise _refuse(path, f"node {node.name!r} uses the custom operator domain {node.domain!r}")
        if tensor is not None:
            _check_tensor(tensor, path=path)
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise _refuse(path, f"onnx.checker refuses it ({str(exc).splitlines()[0][:200]})") from None
    return model


def _walk(graph: Any, *, depth: int, path: str) -> Iterator[tuple[Any, Any]]:
    """Yield ``(node, None)`` for every node and ``(None, tensor)`` for every tensor, subgraphs included."""
    if depth > MAX_DEPTH:
        raise _refuse(path, f"subgraphs nest deeper than {MAX_DEPTH}")
    for tensor in graph.initializer:
        yield None, tensor
    for sparse in graph.sparse_initializer:
        yield None, sparse.values
        yield None, sparse.indices
    for node in graph.node:
        yield node, None
        for attr in node.attribute:
            if attr.HasField("t"):
                yield None, attr.t
            for tensor in attr.tensors:
                yield None, tensor
            if attr.HasField("sparse_tensor"):
                yield None, attr.sparse_tensor.values
                yield None, attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield None, sparse.values
                yield None, sparse.indices
            if attr.HasField("g"):
                yield from _walk(attr.g, depth=depth + 1, path=path)
            for sub in attr.graphs:
                yield from _walk(sub, depth=depth + 1, path=path)


def _check_tensor(tensor: Any, *, path: str) -> None:
    """External data is refused; the declared shape must fit the caps and match the bytes present."""
    from onnx import TensorProto

    name = tensor.name or "<unnamed>"
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise _refuse(path, f"tensor {name!r} keeps its data in an external file ({where!r:.120})")
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            raise _refuse(path, f"tensor {name!r} declares a negative dimension {dim}")
        count *= dim
        if count > MAX_TENSOR_ELEMENTS:
            raise _refuse(path, f"tensor {name!r} declares more than {MAX_TENSOR_ELEMENTS} elements")
    width = _ELEMENT_BYTES.get(tensor.data_type)
    if width is None:
        raise _refuse(path, f"tensor {name!r} has the unknown data type {tensor.data_type}")
    if width and count * width > MAX_TENSOR_BYTES:
        raise _refuse(path, f"tensor {name!r} declares {count * width} bytes")
    present = _elements_present(tensor, width)
    if present is not None and present != count:
        raise _refuse(path, f"tensor {name!r} declares {count} elements but carries {present}")


def _elements_present(tensor: Any, width: int) -> int | None:
    """How many elements the tensor actually carries (None when it carries no data at all)."""
    if tensor.HasField("raw_data"):
        if not width:
            return -1  # strings never use raw_data: a mismatch on purpose
        if len(tensor.raw_data) % width:
            return -1
        return len(tensor.raw_data) // width
    fields = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    lengths = [len(getattr(tensor, f)) for f in fields]
    total = sum(lengths)
    # complex types store two numbers per element
    return total // 2 if tensor.data_type in (14, 15) else total
