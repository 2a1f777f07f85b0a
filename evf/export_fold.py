"""Folding what only looks dynamic out of an exported image encoder.

SAM-2's Hiera interpolates its stored background position embedding to the feature map's size (and tiles its
window embedding over it) in every forward pass. That size is read from the input's shape, so with a dynamic batch
axis neither the exporter nor onnxruntime folds it, and the bicubic ``Resize`` alone costs ~10 % of the Hiera-L
encoder's time on the CPU. The feature size is fixed by the image size, so every tensor computed from stored
tensors and the input's shape only is run once, by onnxruntime on the graph's own nodes, and stored in its place
when it is the same at batch 1 and 2: the values are exactly those the graph computed on every call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def fold_input_independent_tensors(path: Path, input_name: str, input_shape: tuple[int, ...]) -> list[str]:
    """Store, in the graph file ``path``, each tensor computed from stored tensors and the input's shape alone
    (not its values) and read by the input-dependent part, when it is the same at batch 1 and 2; returns the
    stored tensors' names."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    if path.with_name(path.name + ".data").exists():
        return []  # over 2 GiB: onnx's shape inference cannot hold it (no SAM-2 encoder is that large)
    model = onnx.load(str(path))
    candidates = frontier(model.graph, input_name)
    if not candidates:
        return []
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    candidates = [name for name in candidates if name in typed]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(typed[name] for name in candidates)  # the whole graph: If branches read outer names
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = []
    for batch in (1, 2):
        values = session.run(names, {input_name: np.zeros((batch, *input_shape[1:]), np.float32)})
        runs.append([values[names.index(name)] for name in candidates])
    del session, probe
    folded = {name: a for name, a, b in zip(candidates, *runs) if a.shape == b.shape and np.array_equal(a, b)}
    if not folded:
        return []
    nodes = [n for n in model.graph.node if n.output[0] not in folded]
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items())
    keep_only_what_outputs_read(model.graph, nodes)
    onnx.save(model, str(path))
    return sorted(folded)


def frontier(graph, input_name: str) -> list[str]:
    """Single outputs of nodes that do not read the input's values (``Shape`` reads only its shape) but descend
    from a stored tensor, read by nodes that do read the input's values."""
    import onnx

    stored = {t.name for t in graph.initializer}
    floats = {t.name for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    dependent, from_stored, producer = {input_name}, floats, {}
    for node in graph.node:
        reads = read_by(node)
        if node.op_type != "Shape" and reads & dependent:
            dependent.update(node.output)
        elif node.op_type != "Shape" and reads & from_stored:  # weights, not shape arithmetic
            from_stored.update(node.output)
        for output in node.output:
            producer[output] = node
    read_by_dependent = set().union(*(read_by(n) for n in graph.node if n.output[0] in dependent))
    return sorted(name for name in read_by_dependent - dependent - stored
                  if name in from_stored and name in producer and len(producer[name].output) == 1)


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
