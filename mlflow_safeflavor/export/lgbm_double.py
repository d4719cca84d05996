"""LightGBM trees in double precision: its exact float64 thresholds in the converted graph.

LightGBM compares a float64 feature value with a float64 threshold (``fval <= threshold``, no
cast). onnxmltools' converter writes each threshold as a float32 attribute (``nodes_values``)
and the export then compares in float32, so a value between a threshold ``t`` and
``float32(t)`` takes the other branch. Behind a scaler such values are common: the scaled
training values the thresholds sit between are float64 numbers, not float32 ones.

ai.onnx.ml's TreeEnsembleClassifier/Regressor (opset 3) also take a double input and a
``nodes_values_as_tensor`` attribute of type double, and onnxruntime then compares in double.
:func:`exact_thresholds` rewrites the tree node made by onnxmltools accordingly: it feeds it the
float64 transformed input (dropping the float32 cast in front of it) and replaces every split's
float32 threshold with LightGBM's own float64 one, and the leaf weights with the booster's float64
leaf values.

Which LightGBM split an ONNX node stands for is not guessed from numbering or from matching
thresholds: the two trees are walked together from their roots (true branch = LightGBM's left
child), and every node must agree on kind, feature, and ``float32(threshold)`` with what the
converter wrote (a categorical split ``a||b||c`` is the chain of ``==`` nodes the converter
unfolds it into); every split node and leaf of the graph must be reached. Any difference raises
:class:`~mlflow_safeflavor.export.convert.NotConvertible` (the model is saved without the export).
The agreement check still decides whether the result is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_FLOAT = 1  # onnx.TensorProto.FLOAT


def exact_thresholds(proto: Any, booster: Any) -> Any:
    """Make the LightGBM tree node of ``proto`` compare in float64 with ``booster``'s thresholds.

    ``proto`` is the graph skl2onnx/onnxmltools made of a pipeline converted with double inputs and
    a float32 ``Cast`` in front of the LightGBM step (see ``convert._with_cast``); ``booster`` is
    that step's ``lightgbm.Booster``. The Cast is removed (when nothing else reads it), the tree
    node reads its double input, and its thresholds and leaf weights become double tensors holding
    the booster's exact values. Returns ``proto`` (modified in place); raises NotConvertible when
    the graph is not the expected one or its trees cannot be matched to the booster's split by
    split.
    """
    from onnx import helper, numpy_helper

    from mlflow_safeflavor.export._errors import NotConvertible

    graph = proto.graph
    trees = [n for n in graph.node if n.op_type in _TREE_OPS and n.domain == "ai.onnx.ml"]
    if len(trees) != 1:
        raise NotConvertible(f"expected one LightGBM tree node in the converted graph, found {len(trees)}")
    node = trees[0]
    producer = next((n for n in graph.node if node.input[0] in n.output), None)
    to = next((helper.get_attribute_value(a) for a in producer.attribute if a.name == "to"), None) if producer else None
    if producer is None or producer.op_type != "Cast" or to != _FLOAT:
        raise NotConvertible("the LightGBM tree node is not fed by the float32 cast it was converted behind")

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weights_key = "class_weights" if node.op_type == "TreeEnsembleClassifier" else "target_weights"
    try:
        # dump_model() dumps what onnxmltools converted: up to best_iteration when there is one.
        thresholds, weights = _match(attrs, weights_key, booster.dump_model())
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a dump or graph not shaped as expected
        raise NotConvertible(f"the LightGBM trees could not be matched to their export ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None

    node.input[0] = producer.input[0]
    if not any(producer.output[0] in n.input for n in graph.node) and producer.output[0] not in {o.name for o in graph.output}:
        graph.node.remove(producer)
    kept = [a for a in node.attribute if a.name not in ("nodes_values", weights_key)]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute("nodes_values_as_tensor", numpy_helper.from_array(thresholds)))
    node.attribute.append(helper.make_attribute(f"{weights_key}_as_tensor", numpy_helper.from_array(weights)))
    return proto


def _match(attrs: dict[str, Any], weights_key: str, dump: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The float64 threshold of every ONNX node and weight of every ONNX leaf entry, from ``dump``.

    Walks each tree of the graph and of the booster's ``dump_model()`` together from the root and
    raises NotConvertible at the first node that differs in kind, feature or float32 threshold,
    or when a node of the graph is reached twice with different values or never.
    """
    from mlflow_safeflavor.export._errors import NotConvertible

    tree_ids = list(attrs["nodes_treeids"])
    node_ids = list(attrs["nodes_nodeids"])
    modes = [m.decode() if isinstance(m, bytes) else str(m) for m in attrs["nodes_modes"]]
    features = list(attrs["nodes_featureids"])
    values = np.asarray(attrs["nodes_values"], dtype=np.float32)
    true_ids, false_ids = list(attrs["nodes_truenodeids"]), list(attrs["nodes_falsenodeids"])
    prefix = weights_key.split("_", 1)[0]
    leaf_trees, leaf_nodes = list(attrs[f"{prefix}_treeids"]), list(attrs[f"{prefix}_nodeids"])
    leaf_weights = np.asarray(attrs[weights_key], dtype=np.float32)
    if len({len(tree_ids), len(node_ids), len(modes), len(features), len(values), len(true_ids), len(false_ids)}) != 1:
        raise NotConvertible("the LightGBM tree node's node attributes differ in length")
    if len(leaf_trees) != len(leaf_nodes) or len(leaf_nodes) != len(leaf_weights):
        raise NotConvertible("the LightGBM tree node's leaf attributes differ in length")

    index: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(tree_ids, node_ids)):
        if key in index:
            raise NotConvertible(f"tree {key[0]} of the export has node {key[1]} twice")
        index[key] = i
    leaf_index: dict[tuple[int, int], list[int]] = {}
    for j, key in enumerate(zip(leaf_trees, leaf_nodes)):
        leaf_index.setdefault(key, []).append(j)

    infos = dump.get("tree_info") or []
    if set(tree_ids) != set(range(len(infos))):
        raise NotConvertible(f"the export's {len(set(tree_ids))} trees do not match the booster's {len(infos)}")
    exact = np.full(len(values), np.nan)
    exact[[i for i, m in enumerate(modes) if m == "LEAF"]] = 0.0  # never read; the tensor needs a value
    exact_weights = np.full(len(leaf_weights), np.nan)

    def fail(tree: int, nid: int, why: str) -> NotConvertible:
        return NotConvertible(f"LightGBM tree {tree} does not match its export at node {nid} ({why}); "
                              "its float64 thresholds cannot be carried over")

    def visit(tree: int, nid: int, split: dict[str, Any]) -> None:
        # Iterative: LightGBM trees can be deeper than Python's recursion limit allows.
        stack = [(nid, split)]
        seen: set[tuple[int, int]] = set()
        while stack:
            nid, split = stack.pop()
            if (nid, id(split)) in seen:  # a subtree shared by an unfolded categorical chain
                continue
            seen.add((nid, id(split)))
            i = index.get((tree, nid))
            if i is None:
                raise fail(tree, nid, "no such node")
            if "split_feature" not in split:
                if modes[i] != "LEAF":
                    raise fail(tree, nid, "a split where LightGBM has a leaf")
                slots = leaf_index.get((tree, nid), [])
                value = float(split["leaf_value"])
                if len(slots) != 1 or leaf_weights[slots[0]] != np.float32(value):
                    raise fail(tree, nid, "leaf value")
                exact_weights[slots[0]] = value
                continue
            decision, threshold = split.get("decision_type"), split.get("threshold")
            if decision == "<=" and not isinstance(threshold, str):
                mode, tests = "BRANCH_LEQ", [float(threshold)]
            elif decision == "==":
                # A categorical split "a||b||c": the converter unfolds it into a chain of == nodes,
                # each true branch LightGBM's left child, each false branch the next test and the
                # last one's LightGBM's right child.
                try:
                    mode, tests = "BRANCH_EQ", [float(c) for c in str(threshold).split("||")]
                except ValueError:
                    raise fail(tree, nid, f"categorical threshold {str(threshold)[:40]!r}") from None
            else:
                raise fail(tree, nid, f"split {decision!r} with threshold {str(threshold)[:40]!r}")
            for k, value in enumerate(tests):
                i = index.get((tree, nid))
                if i is None:
                    raise fail(tree, nid, "no such node")
                if modes[i] != mode or features[i] != split["split_feature"] or values[i] != np.float32(value):
                    raise fail(tree, nid, f"feature or threshold: {mode} on feature {split['split_feature']} at "
                                          f"{value!r}, exported as {modes[i]} on feature {features[i]} at {float(values[i])!r}")
                if not np.isnan(exact[i]) and exact[i] != value:
                    raise fail(tree, nid, "reached twice with different thresholds")
                exact[i] = value
                stack.append((true_ids[i], split["left_child"]))
                if k + 1 < len(tests):
                    nid = false_ids[i]
                else:
                    stack.append((false_ids[i], split["right_child"]))

    # Each tree's nodes and the ids its splits point to, in one pass (not one pass per tree).
    members: dict[int, list[int]] = {}
    children: dict[int, set[int]] = {}
    for i, tree in enumerate(tree_ids):
        members.setdefault(tree, []).append(node_ids[i])
        if modes[i] != "LEAF":
            children.setdefault(tree, set()).update((true_ids[i], false_ids[i]))
    for tree, info in enumerate(infos):
        if tree not in members:
            raise fail(tree, -1, "missing from the export")
        pointed = children.get(tree, set())
        top = [r for r in members[tree] if r not in pointed]
        if len(top) != 1:
            raise fail(tree, -1, f"{len(top)} roots")
        visit(tree, top[0], info["tree_structure"])
    if np.isnan(exact).any():
        missed = int(np.flatnonzero(np.isnan(exact))[0])
        raise fail(tree_ids[missed], node_ids[missed], "a split LightGBM does not have")
    if np.isnan(exact_weights).any():
        missed = int(np.flatnonzero(np.isnan(exact_weights))[0])
        raise fail(leaf_trees[missed], leaf_nodes[missed], "a leaf LightGBM does not have")
    return exact, exact_weights
