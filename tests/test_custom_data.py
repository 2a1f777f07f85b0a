"""Your own data: the JSON Lines manifest (every target kind, the COCO form), its errors, `evf prepare custom`
(--check and the box pre-pass), hybrid sources, and the worked example of docs/custom-data.md."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import DATAMODULES, prepare
from datamodules.common import DatasetError, DatasetFileError
from datamodules.custom import CustomRefDataModule
from datamodules.hybrid import HybridDataModule
from datamodules.testing import custom, refcoco
from evf.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return custom.write(tmp_path_factory.mktemp("custom") / "mine")


def copy_of(data, tmp_path) -> Path:
    return Path(shutil.copytree(data["root"], tmp_path / "mine"))


def assert_samples(ds, expected):
    assert len(ds) == len(expected)
    for k, want in enumerate(expected):
        got = ds[k]
        assert (got["id"], got["text"], got["image_id"]) == (want["id"], want["text"], want["image_id"])
        assert got["mask"].dtype == bool and np.array_equal(got["mask"], want["mask"]), want["id"]
        assert got["image"].shape[:2] == want["mask"].shape


def test_every_target_kind_decodes_pixel_for_pixel(data):
    dm = CustomRefDataModule(str(data["root"]))
    assert dm.available_splits() == ["test", "train", "val"] and "custom" in DATAMODULES
    for split in ("train", "val", "test"):
        assert_samples(dm.raw_dataset(split, train=False), data["samples"][split])
        assert len(dm.raw_dataset(split, train=True)) == data["lines"][split]
    empty = [s for s in data["samples"]["train"] + data["samples"]["val"] if not s["mask"].any()]
    assert {s["id"].split("#")[0] for s in empty} == {"obj-4", "obj-9"}  # "empty": true lines: all-zero masks
    train = dm.raw_dataset("train")
    again = CustomRefDataModule(str(data["root"])).raw_dataset("train")
    texts = [train[p]["text"] for p in range(40)]  # expressions drawn per (seed, epoch, item), replayed on restart
    assert texts == [again[p]["text"] for p in range(40)] and len(set(texts)) > len(train)


def test_coco_instances_with_an_expressions_file(data):
    dm = CustomRefDataModule(str(data["root"]), manifest="coco.jsonl", image_dir="coco_images")
    for split in ("train", "val"):
        assert_samples(dm.raw_dataset(split, train=False), data["coco_samples"][split])
    assert main(["prepare", "custom", "--check", "--root", str(data["root"]), "--manifest", "coco.jsonl", "--set",
                 "image_dir=coco_images", "--no-progress"]) == 0


def test_box_lines_need_the_prepass_or_box_masks(data, tmp_path):
    root = copy_of(data, tmp_path)
    shutil.rmtree(root / "sam_masks")
    with pytest.raises(DatasetError, match=r"manifest\.jsonl:4: bbox line without its SAM mask; run 'evf prepare custom"):
        CustomRefDataModule(str(root)).raw_dataset("train")
    boxes = CustomRefDataModule(str(root), box_masks=True).raw_dataset("train", train=False)
    assert_samples(boxes, data["samples"]["train"])  # the fixture's "SAM masks" are the filled boxes


def test_box_prepass_with_a_sam_backend_and_a_release_folder(data, tmp_path, release, capsys):
    root = copy_of(data, tmp_path)
    shutil.rmtree(root / "sam_masks")
    assert prepare.main(["custom", "--root", str(root), "--backend", "sam1", "--tiny", "--no-progress"]) == 0
    written = json.loads((root / "sam_masks" / "box_masks_manifest.json").read_text())
    assert sorted(written["masks"]) == ["obj-11", "obj-3"] and written["backend"] == "sam1"
    ds = CustomRefDataModule(str(root)).raw_dataset("test", train=False)
    assert ds[len(ds) - 1]["mask"].shape == data["samples"]["test"][-1]["mask"].shape
    assert "2 bbox lines, 0 already done, 2 to do" in capsys.readouterr().out
    assert main(["prepare", "custom", "--root", str(root), "--backend", str(release), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert sorted(json.loads((tmp_path / "o" / "box_masks_manifest.json").read_text())["masks"]) == ["obj-11", "obj-3"]
    assert prepare.main(["custom", "--root", str(root), "--backend", "sam1", "--tiny", "--no-progress"]) == 0
    assert "2 already done, 0 to do" in capsys.readouterr().out  # a rerun builds no model


GOOD = {"image": "images/img_00.png", "expression": "the cat", "empty": True}
BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got an array"),
    (json.dumps({"image": "images/img_00.png", "empty": True}), "needs 'expression' (a string) or 'expressions'"),
    (json.dumps({"image": "images/img_00.png", "expression": "x"}), "needs exactly one target of mask, polygons, rle, bbox"),
    (json.dumps({**GOOD, "bbox": [1, 2, 3, 4]}), "found bbox, empty"),
    (json.dumps({"expression": "x", "empty": True}), "needs 'image'"),
    (json.dumps({**GOOD, "image": 3}), "'image' must be a non-empty path string, got a number"),
    (json.dumps({**GOOD, "image": "../outside.png"}), "'image' path '../outside.png' leaves the dataset folder"),
    (json.dumps({**GOOD, "image": "/etc/passwd"}), "leaves the dataset folder"),
    (json.dumps({**{k: v for k, v in GOOD.items() if k != "empty"}, "mask": "masks/../../m.png"}), "'mask' path"),
    (json.dumps({**GOOD, "expressions": ["a"], "expression": None}), "exactly one"),
    (json.dumps({**GOOD, "expression": ""}), "expressions must be non-empty strings"),
    (json.dumps({**GOOD, "empty": False}), "'empty' must be true"),
    (json.dumps({**GOOD, "split": 1}), "'split' must be a non-empty string, got a number"),
    (json.dumps({**GOOD, "id": [1]}), "'id' must be a string or a number"),
    (json.dumps({**GOOD, "expresion": "typo"}), "unknown key 'expresion'"),
    (json.dumps({"image": "images/img_00.png", "expression": "x", "bbox": [1, 2, 0, 4]}), "'bbox' must be [x, y, width, height]"),
    (json.dumps({"image": "images/img_00.png", "expression": "x", "polygons": [[1, 2, 3]]}), "at least 3 points"),
    (json.dumps({"image": "images/img_00.png", "expression": "x", "rle": {"counts": "abc"}}), "'rle' must be"),
    (json.dumps({"annotation_id": 999, "expression": "x"}), "annotation 999 is not in"),
    (json.dumps({"annotation_id": [70, 80], "expression": "x"}), "one image expected"),
    (json.dumps({"image_id": 1234, "expression": "x", "empty": True}), "image_id 1234 is not in"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m[:28] for _, m in BAD_LINES])
def test_bad_manifest_lines_are_one_line_errors_naming_file_and_line(data, tmp_path, line, message):
    root = copy_of(data, tmp_path)
    (root / "manifest.jsonl").write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(DatasetFileError) as caught:
        CustomRefDataModule(str(root)).raw_dataset("train")
    text = str(caught.value)
    assert text.startswith(f"{root / 'manifest.jsonl'}:3: ") and message in text and "\n" not in text


def test_bad_manifest_exits_2_with_one_line(data, tmp_path, capsys):
    root = copy_of(data, tmp_path)
    (root / "manifest.jsonl").write_text(json.dumps({**GOOD, "image": "../x.png"}) + "\n")
    assert main(["prepare", "custom", "--check", "--root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evf: error: ") and "manifest.jsonl:1: 'image' path '../x.png' leaves" in err and "\n" not in err


def test_check_reports_counts_and_every_problem(data, tmp_path, capsys):
    root = copy_of(data, tmp_path)
    assert prepare.main(["custom", "--check", "--root", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 items, 9 samples" in out and "val: 4 items, 6 samples" in out and "test: 2 items, 3 samples" in out
    lines = [json.loads(t) for t in (root / "manifest.jsonl").read_text().splitlines()]
    (root / "images" / "img_05.png").unlink()  # lines 11 and 12 (test split)
    (root / "masks" / "obj-0.png").write_bytes(b"not a png")  # line 1
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "obj-5.png")  # line 6: wrong size
    lines[8]["id"] = "obj-7"  # line 9 (val) repeats line 8's id
    lines[6]["polygons"] = [[100, 100, 110, 100, 110, 110, 100, 110]]  # line 7 (val): outside the image, not marked empty
    (root / "manifest.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    assert prepare.main(["custom", "--check", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FATAL: 1 unreadable annotations: img_00.png: .*manifest.jsonl:1: cannot read mask", out)
    assert "FATAL: 1 size mismatches" in out and "FATAL: 2 missing images" not in out and "FATAL: 1 missing images" in out
    assert "FATAL: 1 duplicate ids: 'obj-7' on lines 8, 9" in out
    assert "warning: 1 empty masks: obj-6\n" in out  # the two "empty": true lines are not reported
    assert out.strip().endswith("FAILED: 3 of 3 splits with fatal problems")


def test_unreadable_mask_while_loading_names_the_line(data, tmp_path):
    root = copy_of(data, tmp_path)
    (root / "masks" / "obj-0.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"manifest\.jsonl:1: cannot read mask .*obj-0\.png: the file is empty"):
        CustomRefDataModule(str(root)).raw_dataset("train", train=False)[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "obj-0.png")
    with pytest.raises(DatasetError, match=r"manifest\.jsonl:1: image .*img_00\.png is \d+x\d+ but its target is 5x5"):
        CustomRefDataModule(str(root)).raw_dataset("train", train=False)[0]
    lines = (root / "manifest.jsonl").read_text().splitlines()
    rle = json.loads(lines[2])
    rle["rle"]["size"] = [3, 4]
    (root / "manifest.jsonl").write_text("\n".join([*lines[:2], json.dumps(rle), *lines[3:]]) + "\n")
    with pytest.raises(DatasetError, match=r"manifest\.jsonl:3: RLE segmentation of size \[3, 4\] on an image of size"):
        CustomRefDataModule(str(root)).raw_dataset("train", train=False)[3]


def test_custom_source_in_a_hybrid_mixture(data, tmp_path):
    refer = refcoco.write(tmp_path / "refer")["root"]
    dm = HybridDataModule({"mine": {"type": "custom", "ratio": 1, "root": str(data["root"])},
                           "refcoco": {"type": "refcoco", "ratio": 3, "root": str(refer)}},
                          samples_per_epoch=400, eval_source="mine", val_split="val")
    stream = dm.raw_dataset("train")
    sources = np.array([stream.choose(p)[0] for p in range(400)])
    assert 0.15 < (sources == 0).mean() < 0.35  # ratio 1:3 -> 0.25 (binomial std 0.022)
    sample = stream[int(np.flatnonzero(sources == 0)[0])]
    assert sample["source"] == "mine" and sample["image_id"].startswith("mine/images/")
    assert len(dm.raw_dataset("val")) == len(data["samples"]["val"])


# -- the worked example of docs/custom-data.md, with a tiny release folder --------------------------------------
TINY = ["--model.model.init_args.name", "tiny-beit3-sam1", "--trainer.max_steps", "2", "--trainer.precision", "32",
        "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "2", "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar",
        "false", "--data.init_args.eval_batch_size", "4"]


def worked_example() -> tuple[str, list[list[str]]]:
    """The section's Python block and its `evf` commands (continuation lines joined)."""
    text = (ROOT / "docs" / "custom-data.md").read_text()
    section = text.split("## Worked example", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.DOTALL)).replace("\\\n", " ")
    commands = [shlex.split(line) for line in bash.splitlines() if line.strip().startswith("evf ")]
    assert len(python) == 1 and [c[1] for c in commands] == ["prepare", "fit", "test", "predict"]
    return python[0], commands


def run_example_data(tmp_path, monkeypatch, capsys):
    python, commands = worked_example()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")  # the commands run from the repository root
    exec(compile(python, "docs/custom-data.md", "exec"), {})
    assert main(commands[0][1:] + ["--no-progress"]) == 0
    assert "OK: 0 of 3 splits" in capsys.readouterr().out
    return commands


def tiny_command(command: list[str], release: Path) -> list[str]:
    args = [str(release) if a == "path/to/evf-sam" else a for a in command[1:]]
    return args + TINY if args[0] == "fit" else args


def test_worked_example_data_check_and_init_flag(tmp_path, monkeypatch, capsys, release):
    """Fast part: the pasted data script and the check; the one fine-tune flag names the argument of
    `evf.create_model` that loads a release folder (the slow test below runs `evf fit` with it)."""
    import torch
    import yaml

    import evf
    from evf.model import EVFSAM

    commands = run_example_data(tmp_path, monkeypatch, capsys)
    assert len(CustomRefDataModule("my_data").raw_dataset("train", train=True)) == 56
    spec = yaml.safe_load((ROOT / "experiments" / "custom_finetune.yaml").read_text())["model"]["model"]
    flag = commands[1][commands[1].index("path/to/evf-sam") - 1]
    assert (flag, spec["class_path"]) == ("--model.model.init_args.checkpoint", "evf.create_model")
    model = evf.create_model(**{**spec["init_args"], "name": "tiny-beit3-sam1", "checkpoint": str(release)})
    reference = EVFSAM.from_pretrained(release).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_worked_example_end_to_end(tmp_path, monkeypatch, capsys, release):
    """fit from the release folder, test in a fresh run, predict: every command of the section, tiny models."""
    import torch

    import evf

    commands = run_example_data(tmp_path, monkeypatch, capsys)
    for command in commands[1:]:
        assert main(tiny_command(command, release)) == 0, command
    out = capsys.readouterr().out
    assert re.search(r"test: cIoU=\d\.\d+ gIoU=\d\.\d+", out)
    assert json.loads(Path("runs/my_data-test/metrics.json").read_text())["test"]
    assert sorted(p.name for p in Path("preds").iterdir()) == ["00_the-red-square.png", "overlay.png", "predictions.json"]
    start = evf.create_model("tiny-beit3-sam1", checkpoint=str(release))
    tuned = evf.load("runs/my_data").model
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert moved and all(not k.startswith("sam.model.image_encoder") for k in moved)  # started from the release
