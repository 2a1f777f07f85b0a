"""The exported SAM-2 image encoder stores Hiera's interpolated position embedding instead of re-interpolating it
on every call (evf.export_fold): the folded graph gives bit-identical embeddings, at every batch size."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import torch

from evf.export import ImageEncoderGraph, export_graph
from evf.export_fold import fold_resizes_of_stored_tensors


def resizes_of_stored_tensors(path) -> list[str]:
    graph = onnx.load(str(path)).graph
    stored = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Resize" and n.input[0] in stored]


def embed(path, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"sam_image": images})[0]


def test_hiera_position_embedding_resize_is_folded_exactly(tmp_path):
    from evf.sam import SAM_BACKENDS

    torch.manual_seed(0)
    sam = SAM_BACKENDS.create("sam2", variant="toy").eval()
    size = sam.image_size
    exported, folded = tmp_path / "exported.onnx", tmp_path / "folded.onnx"
    export_graph(ImageEncoderGraph(sam), (torch.zeros(1, 3, size, size),), exported, ["sam_image"], ["embedding"],
                 {"sam_image": {0: "batch"}, "embedding": {0: "batch"}})
    shutil.copy(exported, folded)
    before = resizes_of_stored_tensors(exported)
    assert len(before) == 1 and "trunk" in before[0]  # Hiera's background position embedding

    assert fold_resizes_of_stored_tensors(folded, "sam_image", (1, 3, size, size)) == before
    assert resizes_of_stored_tensors(folded) == []
    images = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    for batch in (1, 3):
        assert np.array_equal(embed(folded, images[:batch]), embed(exported, images[:batch]))
    assert fold_resizes_of_stored_tensors(folded, "sam_image", (1, 3, size, size)) == []  # nothing left to fold


def test_a_graph_without_such_resizes_is_left_as_it_is(tmp_path):
    from evf.sam import SAM_BACKENDS

    torch.manual_seed(0)
    sam = SAM_BACKENDS.create("sam1", variant="tiny").eval()
    path = tmp_path / "sam1.onnx"
    export_graph(ImageEncoderGraph(sam), (torch.zeros(1, 3, sam.image_size, sam.image_size),), path, ["sam_image"],
                 ["embedding"], {"sam_image": {0: "batch"}, "embedding": {0: "batch"}})
    before = path.read_bytes()
    assert fold_resizes_of_stored_tensors(path, "sam_image", (1, 3, sam.image_size, sam.image_size)) == []
    assert path.read_bytes() == before
