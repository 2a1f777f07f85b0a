"""Folding what only looks dynamic out of an exported image encoder.

SAM-2's Hiera interpolates its stored background position embedding to the feature map's size in every forward
pass. That size is read from the input's shape, so with a dynamic batch axis neither the exporter nor onnxruntime
folds it, and the bicubic ``Resize`` costs ~10 % of the Hiera-L encoder's time on the CPU. The feature size is
fixed by the image size, so a ``Resize`` of a stored tensor is run once, by onnxruntime on the graph's own nodes,
and its result stored in its place: the values are exactly those the graph computed on every call.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def fold_resizes_of_stored_tensors(path: Path, input_name: str, input_shape: tuple[int, ...]) -> list[str]:
    """Replace, in the graph file ``path``, each ``Resize`` whose data is a stored tensor by its (batch-independent)
    result; returns the folded nodes' names (none when a result would depend on the batch)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    if path.with_name(path.name + ".data").exists():
        return []  # over 2 GiB: onnx's shape inference cannot hold it (no SAM-2 encoder is that large)
    model = onnx.load(str(path))
    stored = {t.name for t in model.graph.initializer}
    resizes = [n for n in model.graph.node if n.op_type == "Resize" and n.input[0] in stored]
    if not resizes:
        return []
    outputs = [n.output[0] for n in resizes]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        part = Path(tmp) / "resizes.onnx"  # the Resize nodes and the shape arithmetic they read
        onnx.utils.extract_model(str(path), str(part), [input_name], outputs, check_model=False)
        session = ort.InferenceSession(str(part), providers=["CPUExecutionProvider"])
        runs = [session.run(outputs, {input_name: np.zeros((batch, *input_shape[1:]), np.float32)}) for batch in (1, 2)]
        del session
    if not all(np.array_equal(a, b) for a, b in zip(*runs)):
        return []
    folded = {n.name for n in resizes}
    nodes = [n for n in model.graph.node if n.name not in folded]
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for v, name in zip(runs[0], outputs))
    keep_only_what_outputs_read(model.graph, nodes)
    onnx.save(model, str(path))
    return sorted(folded)


def keep_only_what_outputs_read(graph, nodes: list) -> None:
    """``graph`` keeps the ``nodes`` and stored tensors its outputs depend on (the folded shape arithmetic goes)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(read_by(node))
    kept = [copy(n) for n in reversed(kept)]  # copies: the originals belong to the fields emptied next
    tensors = [copy(t) for t in graph.initializer if t.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(tensors)


def read_by(node) -> set[str]:
    """The names ``node`` reads, including those its subgraphs (``If`` branches) take from the outer graph."""
    import onnx

    names = {i for i in node.input if i}
    for attribute in node.attribute:
        subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in subgraphs:
            for inner in graph.node:
                names |= read_by(inner)
    return names


def copy(message):
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate
