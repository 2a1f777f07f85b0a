"""Objects365 as instance-level referring data (paper Sec. A.2).

Only categories with exactly ONE instance in an image are kept (a category name is ambiguous when
several instances share it); the prompt is the category name. Objects365 has boxes, not masks:
``evf prepare objects365`` turns each kept box into a mask with a SAM backend's box prompt and
writes ``<masks_dir>/objects365_<split>.json`` (COCO format, RLE masks), which this datamodule reads.
``box_masks=True`` reads the raw file instead and uses filled boxes as masks (checks, smoke tests).
The pre-pass itself (``box_prepass``) is at the end of this file.

Layout (official v2 release; ``file_name`` entries such as ``images/v1/patch0/x.jpg`` are also
found under ``<split>/patch0/x.jpg``)::

    root/train/zhiyuan_objv2_train.json   root/train/patch0/objects365_v1_00000000.jpg ...
    root/val/zhiyuan_objv2_val.json       root/val/...
"""
from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import DATAMODULES
from datamodules.common import DatasetError, FileDataModule, SampleDataset, coco_mask, load_json
from datamodules.schema import ID, check_coco

RAW_ANN_FILE = "{split}/zhiyuan_objv2_{split}.json"
PREPARED_FILE = "objects365_{split}.json"


def one_instance_annotations(annotations: Iterable[dict]) -> list[dict]:
    """Annotations whose category occurs exactly once in their image (a crowd box counts as several)."""
    annotations = list(annotations)
    counts = Counter((a["image_id"], a["category_id"]) for a in annotations)
    return [a for a in annotations if counts[(a["image_id"], a["category_id"])] == 1 and not a.get("iscrowd", 0)]


def find_image(image_dir: Path, file_name: str) -> Path:
    """``image_dir/file_name``, else the release's ``patchN/name`` or bare ``name`` under ``image_dir``."""
    parts = Path(file_name).parts
    for candidate in (Path(file_name), Path(*parts[-2:]), Path(parts[-1])):
        if (image_dir / candidate).is_file():
            return image_dir / candidate
    return image_dir / file_name  # missing: the reader names this path


def box_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    x, y, w, h = bbox
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, round(y)):round(y + h), max(0, round(x)):round(x + w)] = True
    return mask


class Objects365Dataset(SampleDataset):
    """Eval: one sample per kept annotation; train: one item per image, the annotation from the seeded stream."""

    def __init__(self, coco: dict, image_dir: Path, source: Path, box_masks: bool = False, train: bool = False,
                 seed: int = 0):
        super().__init__(train, seed)
        check_coco(coco, source, {"id": ID, "image_id": ID, "category_id": ID}, categories=True)
        self.image_dir, self.source, self.box_masks = image_dir, source, box_masks
        self.images = {img["id"]: img for img in coco["images"]}
        self.names = {c["id"]: str(c["name"]).strip().lower() for c in coco["categories"]}
        kept = one_instance_annotations(coco["annotations"])
        if not box_masks and any("segmentation" not in a for a in kept):
            raise DatasetError(f"{source}: annotations without masks; run 'evf prepare objects365' first "
                             "(or box_masks=true for box-shaped masks)")
        by_image: dict = defaultdict(list)
        for ann in kept:
            by_image[ann["image_id"]].append(ann)
        self.by_image = dict(by_image)
        self.items = list(self.by_image) if train else kept
        if not self.items:
            raise DatasetError(f"{source}: no one-instance annotations")

    def annotation(self, item: int, rng: np.random.Generator | None) -> dict:
        if not self.train:
            return self.items[item]
        anns = self.by_image[self.items[item]]
        return anns[int(rng.integers(len(anns)))]

    def image_path(self, item: int) -> Path:
        image_id = self.items[item] if self.train else self.items[item]["image_id"]
        return find_image(self.image_dir, self.images[image_id]["file_name"])

    def target(self, item: int, rng: np.random.Generator | None) -> dict[str, Any]:
        ann = self.annotation(item, rng)
        info = self.images[ann["image_id"]]
        if self.box_masks:
            mask = box_mask(ann["bbox"], info["height"], info["width"])
        else:
            mask = coco_mask(ann["segmentation"], info["height"], info["width"])
        return {"mask": mask, "text": self.names[ann["category_id"]], "id": str(ann["id"]),
                "image_id": str(ann["image_id"])}


@DATAMODULES.register("objects365", tiny={"root": "fixture", "batch_size": 2})
class Objects365DataModule(FileDataModule):
    """Objects365 with SAM masks from ``evf prepare objects365``.

    Args:
        masks_dir: the pre-pass ``--out`` folder (default ``root/sam_masks``).
        ann_file / image_dir: templates with ``{split}`` for the raw release.
        box_masks: use the raw boxes as masks instead of the pre-pass output.
    """

    fixture = "objects365"

    def __init__(self, root: str, masks_dir: str | None = None, ann_file: str = RAW_ANN_FILE,
                 image_dir: str = "{split}", box_masks: bool = False, seed: int = 0, augment: Any = None,
                 batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 embedding_cache: str | None = None):
        super().__init__(root, seed, augment, batch_size, eval_batch_size, num_workers, train_split, val_split,
                         test_split, embedding_cache)
        self.masks_dir = Path(masks_dir) if masks_dir else self.root / "sam_masks"
        self.ann_file, self.image_dir, self.box_masks = ann_file, image_dir, box_masks

    def build(self, split: str, train: bool) -> Objects365Dataset:
        if self.box_masks:
            source = self.root / self.ann_file.format(split=split)
        else:
            source = self.masks_dir / PREPARED_FILE.format(split=split)
            if not source.is_file():
                raise FileNotFoundError(f"Objects365 masks not found: {source} (run 'evf prepare objects365 --root "
                                        f"{self.root} --split {split} --backend ... --out {self.masks_dir}')")
        return Objects365Dataset(load_json(source), self.root / self.image_dir.format(split=split), source,
                                 self.box_masks, train, self.seed)


# -- the box -> mask pre-pass (``evf prepare objects365``) ---------------------------------------------------------
def segment_image(backend, image: np.ndarray, boxes_xywh: list[list[float]], device: str) -> np.ndarray:
    """Boxes in original pixels -> bool masks ``[N, H, W]`` from the SAM backend's box prompt."""
    import torch

    height, width = image.shape[:2]
    with torch.no_grad():
        view, (h, w) = backend.image_view(image)
        embedding = backend.embed_images(view[None].to(device))
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes_xywh], dtype=torch.float32)
        boxes = boxes * torch.tensor([w / width, h / height, w / width, h / height])  # into the SAM view's pixels
        logits = backend.decode_boxes(embedding, boxes.to(device))
        return (backend.postprocess(logits[:, 0], (h, w), (height, width)) > 0).cpu().numpy()


def box_prepass(root: str, out: str, build_backend: Callable[[], Any], backend_name: str, split: str = "train",
                ann_file: str = RAW_ANN_FILE, image_dir: str = "{split}", limit: int | None = None,
                device: str = "cpu", progress: bool = True) -> int:
    """Keep the one-instance annotations of ``split`` and turn each box into a SAM mask. Every finished image is
    written atomically to ``out/shards_<split>/<image_id>.json`` (an interrupted run resumes there), then the
    shards are merged into ``out/objects365_<split>.json`` + ``out/summary_<split>.json``. ``build_backend`` is
    called only if an image is left to do. Returns the exit code: 1 if an image could not be read."""
    from tqdm import tqdm

    from datamodules.common import encode_rle, require_dir
    from evf.io import ImageReadError, read_image, write_text_atomic

    root = require_dir(root, "dataset root")
    coco = load_json(root / ann_file.format(split=split), "Objects365 annotation file")
    images_at, out = root / image_dir.format(split=split), Path(out)
    kept = one_instance_annotations(coco["annotations"])
    by_image: dict = defaultdict(list)
    for ann in kept:
        by_image[ann["image_id"]].append(ann)
    images = [img for img in coco["images"] if img["id"] in by_image]
    shards = out / f"shards_{split}"
    shards.mkdir(parents=True, exist_ok=True)
    pending = [img for img in images if not (shards / f"{img['id']}.json").is_file()]
    todo = pending[:limit]
    print(f"objects365 {split}: {len(coco['images'])} images / {len(coco['annotations'])} annotations; "
          f"the one-instance filter keeps {len(images)} images / {len(kept)} annotations; "
          f"{len(images) - len(pending)} already done, {len(todo)} to do", flush=True)
    backend = build_backend().to(device).eval() if todo else None  # a finished run needs no model: it only merges
    failed = []
    for img in tqdm(todo, desc="box prompts", unit="img", disable=True if not progress else None, file=sys.stderr):
        try:
            image = read_image(find_image(images_at, img["file_name"]))
        except ImageReadError as exc:
            failed.append(str(exc))  # no shard: a later run retries it
            continue
        anns = by_image[img["id"]]
        masks = segment_image(backend, image, [a["bbox"] for a in anns], device)
        records = [{**a, "segmentation": encode_rle(m), "area": float(m.sum())} for a, m in zip(anns, masks)]
        write_text_atomic(shards / f"{img['id']}.json", json.dumps({"image_id": img["id"], "annotations": records}))
    return merge_shards(coco, images, shards, out / PREPARED_FILE.format(split=split), out / f"summary_{split}.json",
                        failed, backend_name)


def merge_shards(coco: dict, images: list[dict], shards: Path, target: Path, summary_path: Path, failed: list[str],
                 backend: str) -> int:
    from evf.io import write_text_atomic

    done_images, annotations = [], []
    for img in images:
        shard = shards / f"{img['id']}.json"
        if shard.is_file():
            done_images.append(img)
            annotations += json.loads(shard.read_text())["annotations"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    summary = {
        "backend": backend,
        "before": {"images": len(coco["images"]), "annotations": len(coco["annotations"])},
        "after": {"images": len(done_images), "annotations": len(annotations)},
        "pending_images": len(images) - len(done_images), "failed_images": failed,
        "empty_masks": sum(a["area"] == 0 for a in annotations),
        "per_category": dict(Counter(names[a["category_id"]] for a in annotations).most_common()),
    }
    write_text_atomic(target, json.dumps({"images": done_images, "annotations": annotations,
                                          "categories": coco["categories"]}))
    write_text_atomic(summary_path, json.dumps(summary, indent=1))
    print(f"wrote {target}: {len(done_images)} images, {len(annotations)} annotations "
          f"({summary['pending_images']} images pending, {summary['empty_masks']} empty masks); summary {summary_path}")
    for message in failed[:3]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if failed else 0
