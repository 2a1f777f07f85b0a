"""``evf predict`` on a tiny official release folder and on a Lightning checkpoint from a tiny ``evf fit``."""
from __future__ import annotations

import numpy as np
import pytest

from evf.cli import main as evf
from evf.io import read_image
from evf.output_set import MANIFEST_NAME
from evf.visualize import COLOURS, mask_names, overlay, slug
from tests.cli_helpers import assert_outputs_match
from tests.tiny_artifacts import write_image

PROMPTS = ["the red square", "the largest circle on the left", "blue"]


@pytest.fixture(scope="module")
def fitted(tiny_run):
    return tiny_run


def run_predict(capsys, checkpoint, image, out, prompts=PROMPTS, extra=()):
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out)]
    for p in prompts:
        args += ["--prompt", p]
    code = evf(args + list(extra))
    return code, capsys.readouterr()


def test_release_folder_masks_equal_api(release, tmp_path, capsys):
    from evf.model import EVFSAM

    image_path = write_image(tmp_path / "img.png")
    code, cap = run_predict(capsys, release, image_path, tmp_path / "out")
    assert code == 0, cap.err
    image = read_image(image_path)
    expected = EVFSAM.from_pretrained(release).predict(image, PROMPTS).numpy()
    assert expected.shape == (len(PROMPTS), 40, 56) and 0 < expected.mean() < 1  # not a trivial mask
    assert_outputs_match(tmp_path / "out", image, PROMPTS, expected)
    printed = cap.out.split()
    assert len(printed) == len(PROMPTS) + 1 and printed[-1].endswith("overlay.png")


@pytest.mark.parametrize("kind", ["rgba", "gray", "gray_alpha", "gray16"])
def test_converted_image_kinds(release, tmp_path, capsys, kind):
    from evf.model import EVFSAM

    image_path = write_image(tmp_path / f"{kind}.png", kind=kind)
    code, cap = run_predict(capsys, release, image_path, tmp_path / "out", prompts=["the blue square"])
    assert code == 0, cap.err
    image = read_image(image_path)
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    expected = EVFSAM.from_pretrained(release).predict(image, ["the blue square"]).numpy()
    assert_outputs_match(tmp_path / "out", image, ["the blue square"], expected)


def test_lightning_checkpoint_reproduces_trained_model(fitted, tmp_path, capsys):
    cli, ckpt, _ = fitted
    image_path = write_image(tmp_path / "img.png", seed=3)
    code, cap = run_predict(capsys, ckpt, image_path, tmp_path / "out")
    assert code == 0, cap.err
    image = read_image(image_path)
    expected = cli.model.model.eval().predict(image, PROMPTS).numpy()
    assert_outputs_match(tmp_path / "out", image, PROMPTS, expected)


def test_lightning_checkpoint_with_explicit_config(fitted, tmp_path, capsys):
    cli, ckpt, run_config = fitted
    lonely = tmp_path / "elsewhere" / "model.ckpt"  # no config.yaml next to it
    lonely.parent.mkdir()
    lonely.write_bytes(ckpt.read_bytes())
    image_path = write_image(tmp_path / "img.png", seed=4)
    code, cap = run_predict(capsys, lonely, image_path, tmp_path / "no-config", prompts=["red"])
    assert code == 2 and "--config" in cap.err
    code, cap = run_predict(capsys, lonely, image_path, tmp_path / "out", prompts=["red"],
                            extra=["--config", str(run_config)])
    assert code == 0, cap.err
    expected = cli.model.model.eval().predict(read_image(image_path), ["red"]).numpy()
    assert_outputs_match(tmp_path / "out", read_image(image_path), ["red"], expected)


def test_prompt_file_utf8(release, tmp_path, capsys):
    prompts = ["the square", "der Kreis ü", "最大的圆"]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts[1:]) + "\n\n", encoding="utf-8")
    image_path = write_image(tmp_path / "img.png")
    code, cap = run_predict(capsys, release, image_path, tmp_path / "out", prompts=prompts[:1],
                            extra=["--prompt-file", str(prompt_file)])
    assert code == 0, cap.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*mask_names(prompts), "overlay.png", MANIFEST_NAME])


def test_names_and_overlay_colours():
    assert slug("The red square, on the LEFT!") == "the-red-square-on-the-left"
    assert slug("!!!") == "prompt"
    assert mask_names(["a b", "c"]) == ["00_a-b.png", "01_c.png"]
    assert mask_names(["x"] * 101)[100] == "100_x.png"
    image = np.full((2, 2, 3), 100, np.uint8)
    masks = np.array([[[True, False], [False, False]], [[False, True], [False, False]]])
    out = overlay(image, masks)
    np.testing.assert_array_equal(out[0, 0], np.round(0.5 * 100 + 0.5 * np.array(COLOURS[0])))
    assert COLOURS[0] == (50, 120, 220)  # the official EVF-SAM overlay colour
    np.testing.assert_array_equal(out[0, 1], np.round(0.5 * 100 + 0.5 * np.array(COLOURS[1])))
    np.testing.assert_array_equal(out[1], image[1])
