"""Assertions shared by the command-line tests: one-line errors and unchanged folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from evf.output_set import MANIFEST_NAME
from evf.visualize import mask_names, overlay


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("evf: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def read_png(path):
    with Image.open(path) as im:
        return np.array(im)


def assert_outputs_match(out, image, prompts, expected):
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)
    assert names == sorted(mask_names(prompts) + ["overlay.png"])
    if (out / MANIFEST_NAME).is_file():  # the single-image form: the call's manifest lists exactly these files
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        assert manifest["status"] == "complete" and sorted(manifest["files"]) == names
    for name, mask in zip(mask_names(prompts), expected):
        written = read_png(out / name)
        assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written == 255, mask)
    np.testing.assert_array_equal(read_png(out / "overlay.png"), overlay(image, expected))
