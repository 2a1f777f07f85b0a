"""The exported image encoder stores what it computed from its weights and the input's shape alone on every call
(evf.export_fold): Hiera's interpolated position embedding (SAM-2), SAM-1's relative-position lookups. The folded
graph gives bit-identical embeddings at every batch size."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from evf.export import ImageEncoderGraph, export_graph
from evf.export_fold import fold_input_independent_tensors


def resizes_of_stored_tensors(path) -> list[str]:
    graph = onnx.load(str(path)).graph
    stored = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Resize" and n.input[0] in stored]


def embed(path, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"sam_image": images})[0]


@pytest.mark.parametrize("backend,variant", [("sam2", "toy"), pytest.param("sam1", "tiny", marks=pytest.mark.slow)])
def test_folded_encoder_gives_identical_embeddings(backend, variant, tmp_path, capfd):
    from evf.sam import SAM_BACKENDS

    torch.manual_seed(0)
    sam = SAM_BACKENDS.create(backend, variant=variant).eval()
    size = sam.image_size
    exported, folded = tmp_path / "exported.onnx", tmp_path / "folded.onnx"
    export_graph(ImageEncoderGraph(sam), (torch.zeros(1, 3, size, size),), exported, ["sam_image"], ["embedding"],
                 {"sam_image": {0: "batch"}, "embedding": {0: "batch"}})
    shutil.copy(exported, folded)
    resizes = resizes_of_stored_tensors(exported)
    assert resizes == (["/image_encoder/trunk/Resize"] if backend == "sam2" else [])  # Hiera's position embedding

    stored = fold_input_independent_tensors(folded, "sam_image", (1, 3, size, size))
    assert stored and resizes_of_stored_tensors(folded) == []
    assert len(onnx.load(str(folded)).graph.node) < len(onnx.load(str(exported)).graph.node)
    images = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    capfd.readouterr()
    for batch in (1, 3):
        assert np.array_equal(embed(folded, images[:batch]), embed(exported, images[:batch]))
    assert "W:onnxruntime" not in capfd.readouterr().err  # no shape-merge warnings from a half-folded branch
    assert fold_input_independent_tensors(folded, "sam_image", (1, 3, size, size)) == []  # nothing left to fold
