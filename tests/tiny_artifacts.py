"""Writers of tiny random-weight artifacts in the real on-disk formats (shared by the CLI tests).

- ``write_release_folder``: an official EVF-SAM release folder (config.json, model.safetensors in the
  official key schema, sentencepiece.bpe.model).
- ``tiny_fit``: a real ``evf fit`` run (LightningCLI) leaving ``config.yaml`` + a Lightning ``.ckpt``.
- ``write_image``: PNGs with 1/2/3/4 channels or 16-bit depth.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The tiny model of every training test (a format string: sam_weights, lr); the data and trainer sections follow.
TINY_MODEL_YAML = """\
seed_everything: 0
model:
  model:
    encoder:
      class_path: evf.encoders.Beit3Encoder
      init_args: {{size: tiny}}
    sam:
      class_path: evf.sam.Sam1Backend
      init_args: {{variant: tiny, checkpoint: {sam_weights}}}
  lr: {lr}
"""

TINY_FIT_YAML = TINY_MODEL_YAML + """\
data:
  class_path: datamodules.SyntheticRefDataModule
  init_args: {{train_size: 4, val_size: 2, test_size: 2, batch_size: 2, image_size: 48}}
trainer:
  accelerator: cpu
  max_steps: {max_steps}
  limit_val_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {root}, name: csv}}
"""


def tiny_evfsam(seed: int = 0, backend: str = "sam1"):
    """Tiny BEiT-3 + the registered tiny variant of SAM backend ``backend`` (random weights from ``seed``), in eval mode."""
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import SAM_BACKENDS

    torch.manual_seed(seed)
    return EVFSAM(Beit3Encoder(size="tiny"), SAM_BACKENDS.create(backend, tiny=True)).eval()


def to_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from evf.release import to_official

    return {k: v.detach().clone().contiguous() for k, v in to_official(state).items()}


def write_release_folder(folder: Path, seed: int = 0, architecture: str = "EvfSamModel") -> Path:
    from safetensors.torch import save_file

    from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [architecture], "mm_extractor_scale": "tiny", "sam_scale": "tiny"}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(to_official_keys(tiny_evfsam(seed).state_dict()), str(folder / "model.safetensors"))
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, folder / SPM_FILENAME)
    return folder


def write_fit_config(root: Path, max_steps: int = 1) -> Path:
    """A tiny fit YAML; SAM's frozen weights come from a file, as in real use, so rebuilding is exact."""
    from safetensors.torch import save_file

    from evf.sam import Sam1Backend

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    sam_weights = root / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in Sam1Backend(variant="tiny").model.state_dict().items()}, str(sam_weights))
    config = root / "tiny_fit.yaml"
    config.write_text(TINY_FIT_YAML.format(sam_weights=sam_weights, lr="1.0e-3", root=root / "run", max_steps=max_steps))
    return config


def tiny_fit(root: Path):
    """Run ``evf fit`` in-process; returns ``(cli, checkpoint path, run config.yaml)``."""
    from evf.lightning_cli import run_lightning_cli

    cli = run_lightning_cli(["fit", "--config", str(write_fit_config(root))])
    ckpt = next((root / "run").rglob("*.ckpt"))
    return cli, ckpt, next((root / "run").rglob("config.yaml"))


def moving_shapes(count: int = 3, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """A red square moving right and a blue box moving left over a dark background (the video tests' clip)."""
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 30, np.uint8)
        frame[10:30, 5 + 3 * i: 25 + 3 * i] = (220, 40, 40)
        frame[30:44, 40 - 2 * i: 54 - 2 * i] = (40, 40, 220)
        frames.append(frame)
    return frames


def write_image(path: Path, kind: str = "rgb", size: tuple[int, int] = (40, 56), seed: int = 0) -> Path:
    """``kind``: rgb, rgba, gray, gray_alpha (2 channels) or gray16 (16-bit)."""
    rng = np.random.default_rng(seed)
    h, w = size
    if kind == "gray16":
        Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
        return path
    channels = {"rgb": 3, "rgba": 4, "gray": 1, "gray_alpha": 2}[kind]
    array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path)
    return path
