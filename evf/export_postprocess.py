"""The post-processing graph of an ONNX export, built op by op with ``onnx.helper``.

Low-res logits ``[prompts, h, w]`` (float), the SAM view's ``input_size`` and the image's ``original_size``
(int64 ``[2]`` each, ``(h, w)``) -> ``logits`` at the original size and ``masks`` (logit > 0). The sizes change
with every image, which a traced torch graph would freeze; ONNX ``Resize`` takes them as inputs.
Bilinear, half-pixel centres, no antialias: what ``F.interpolate(..., align_corners=False)`` computes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17


def build_postprocess(spec: dict, path: Path) -> None:
    """``spec``: ``{"kind": "resize"}`` (SAM-2, EfficientSAM) or ``{"kind": "upsample_crop_resize", "size": S}``
    (SAM-1: upsample to the ``S x S`` input square, crop the padding off to ``input_size``, resize)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def resize(src: str, hw: str, dst: str) -> None:
        # sizes = [prompts, 1] ++ hw; the logits carry a channel axis of 1 so only the last two axes resize
        nodes.append(helper.make_node("Concat", [f"{dst}_lead", hw], [f"{dst}_sizes"], axis=0))
        nodes.append(helper.make_node("Resize", [src, "", "", f"{dst}_sizes"], [dst], mode="linear",
                                      coordinate_transformation_mode="pytorch_half_pixel"))

    const("zero", [0])
    const("two", [2])
    const("axis1", [1])
    nodes.append(helper.make_node("Unsqueeze", ["low_res_logits", "axis1"], ["x0"]))
    nodes.append(helper.make_node("Shape", ["x0"], ["shape0"]))
    nodes.append(helper.make_node("Slice", ["shape0", "zero", "two"], ["x1_lead"]))  # [prompts, 1]
    src = "x0"
    if spec["kind"] == "upsample_crop_resize":
        size = int(spec["size"])
        resize("x0", const("square", [size, size]), "x1")
        nodes.append(helper.make_node("Slice", ["x1", const("crop_start", [0, 0]), "input_size",
                                               const("crop_axes", [2, 3])], ["x2"]))
        src = "x2"
    elif spec["kind"] != "resize":
        raise ValueError(f"unknown post-processing kind {spec['kind']!r}")
    nodes.append(helper.make_node("Identity", ["x1_lead"], ["logits4_lead"]))
    resize(src, "original_size", "logits4")
    nodes.append(helper.make_node("Squeeze", ["logits4", "axis1"], ["logits"]))
    nodes.append(helper.make_node("Greater", ["logits", "zero_f"], ["masks"]))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero_f"))
    graph = helper.make_graph(
        nodes, "evf_postprocess",
        [helper.make_tensor_value_info("low_res_logits", TensorProto.FLOAT, ["prompts", "h", "w"]),
         helper.make_tensor_value_info("input_size", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("original_size", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["prompts", "H", "W"]),
         helper.make_tensor_value_info("masks", TensorProto.BOOL, ["prompts", "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
