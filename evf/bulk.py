"""Bulk inference: many images through Lightning's predict loop, each image embedded once.

    items = collect_items(["photos/"], prompts=["the zebra"])        # evf.bulk_inputs
    run_bulk(model, items, write, accelerator="cuda", devices=4)     # one process per GPU

While the model works on image ``i``, worker threads decode and preprocess the next images
(``ImageStream``) and a writer thread saves the outputs of the previous one. With ``devices > 1``
Lightning starts one process per device (DDP; the command line is run again in each) and every
process takes every ``world_size``-th image, so each image is done exactly once.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, IterableDataset

from evf.bulk_inputs import BulkItem
from evf.config_errors import ConfigError
from evf.io import read_image
from evf.model import EVFSAM
from evf.predictor import DEFAULT_MAX_BATCH, ImageSession

# write(out_name, image uint8 [H, W, 3], prompts, masks bool [N, H, W]): saves one image's outputs.
Writer = Callable[[Path, np.ndarray, Sequence[str], np.ndarray], Any]


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ImageStream(IterableDataset):
    """This process's share of ``items`` as decoded, preprocessed samples, in order, ``prefetch`` images ahead.

    Decoding (PIL) and the resize/normalise views run in ``threads`` threads of this process: nothing to
    pickle, no copy of the model in worker processes, and both release the GIL for most of their work.
    """

    def __init__(self, items: Sequence[BulkItem], sample: Callable[[np.ndarray], dict], threads: int = 2,
                 prefetch: int = 4):
        self.items, self.sample = list(items), sample
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)

    def shard(self) -> list[BulkItem]:
        rank, world = rank_and_world()
        return self.items[rank::world]

    def load(self, item: BulkItem) -> dict[str, Any]:
        image = read_image(item.image)
        # plain values only: Lightning moves the tensors of "sample" to the device
        return {"image": image, "sample": self.sample(image), "prompts": list(item.prompts), "out_name": str(item.out_name)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        todo = iter(self.shard())
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="evf-decode")
        pending: deque[Future] = deque(pool.submit(self.load, item) for _, item in zip(range(self.prefetch), todo))
        try:
            while pending:
                ready = pending.popleft().result()  # a bad image raises here, naming the file
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(self.load, following))
                yield ready
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class BulkPredictModule(LightningModule):
    """``predict_step``: one image -> ``ImageSession`` -> masks of all its prompts -> handed to the writer thread."""

    def __init__(self, model: EVFSAM, write: Writer, max_batch: int | None = DEFAULT_MAX_BATCH, max_pending_writes: int = 4,
                 presence_sink: Callable[[str, list[float]], Any] | None = None):
        super().__init__()
        self.model = model
        self.presence_sink = presence_sink  # gets (out_name, presence scores) per image, for a presence-head model
        self.write, self.max_batch, self.max_pending_writes = write, max_batch, max_pending_writes
        self.tokenizer = model.encoder.tokenizer  # loaded once, not per image
        self.writer: ThreadPoolExecutor | None = None
        self.pending: deque[Future] = deque()

    def on_predict_start(self) -> None:
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="evf-write")
        # processes launched from outside (torchrun, srun) start writing only once process 0 has cleared --out
        self.trainer.strategy.barrier("evf-outputs-cleared")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        result = ImageSession(self.model, batch["sample"], self.tokenizer).predict_with_scores(batch["prompts"], self.max_batch)
        if result.presence is not None and self.presence_sink is not None:
            self.presence_sink(batch["out_name"], result.presence.tolist())
        masks = result.masks
        self.pending.append(self.writer.submit(self.write, Path(batch["out_name"]), batch["image"], batch["prompts"],
                                               masks.numpy()))
        # bounded: outputs waiting to be written never pile up in memory; a failed write is raised here
        while self.pending and (len(self.pending) > self.max_pending_writes or self.pending[0].done()):
            self.pending.popleft().result()

    def on_predict_end(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.writer.shutdown(wait=True)
        self.trainer.strategy.barrier("evf-outputs-written")  # process 0 then writes the output manifest

    def stop_writing(self) -> None:
        """After an error or Ctrl-C: drop the queued writes, wait for the one under way (nothing writes later)."""
        if self.writer is not None:
            self.writer.shutdown(wait=True, cancel_futures=True)


class ImagesProgressBar(Callback):
    """A tqdm bar on stderr counting the images of process 0 (the other processes run in step with it)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.bar = total, enabled, None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from tqdm.auto import tqdm

        world = trainer.world_size
        desc = "images" if world == 1 else f"images (process 0 of {world})"
        self.bar = tqdm(total=len(range(0, self.total, world)), desc=desc, unit="img", file=sys.stderr,
                        disable=not self.enabled or trainer.global_rank != 0, dynamic_ncols=True)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.bar.update(1)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.bar.close()


def as_is(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """No banner lines (GPU available..., tips) and no warnings that do not apply to this loop."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        for message in (".*does not have many workers.*",  # decoding runs in ImageStream's threads
                        ".*predict returned None.*",  # outputs are written, not returned
                        ".*LeafSpec.*"):  # Lightning's own use of a deprecated torch API
            warnings.filterwarnings("ignore", message)
        try:
            for log in loggers:
                log.setLevel(logging.WARNING)
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def run_bulk(model: EVFSAM, items: Sequence[BulkItem], write: Writer, accelerator: str = "cpu",
             devices: int | list[int] = 1, max_batch: int | None = DEFAULT_MAX_BATCH, threads: int = 2,
             prefetch: int = 4, progress: bool = True, presence_sink: Callable[[str, list[float]], Any] | None = None) -> bool:
    """Segment every item and hand each image's masks to ``write``; returns whether this is process 0.

    ``devices``: a count (``accelerator="cuda", devices=4``: four GPUs, one process each) or a list of
    device indices (``[1]``: GPU 1 only). Nothing is kept in memory after an image is written. Like every
    Lightning run, it leaves ``model`` on the CPU in eval mode.
    """
    if not items:
        raise ValueError("no images to segment")
    stream = ImageStream(items, model.preprocessor().sample, threads=threads, prefetch=prefetch)
    # collate_fn keeps the decoded image a numpy array on the CPU (the default would make it a device tensor)
    loader = DataLoader(stream, batch_size=None, num_workers=0, collate_fn=as_is)
    with quiet_lightning():
        trainer = Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, inference_mode=True,
                          callbacks=[ImagesProgressBar(len(items), progress)])
        module = BulkPredictModule(model.eval(), write, max_batch, presence_sink=presence_sink)
        sigint = signal.getsignal(signal.SIGINT)
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except SystemExit as exc:
            # Lightning answers Ctrl-C with its own clean-up and sys.exit(1): give the caller its KeyboardInterrupt
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
        finally:
            module.stop_writing()
            if threading.current_thread() is threading.main_thread() and sigint is not None:
                signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from the first Ctrl-C on
    return trainer.global_rank == 0


def device_choice(device: str, devices: int) -> tuple[str, int | list[int]]:
    """``--device``/``--devices`` -> Lightning's ``(accelerator, devices)``: ``cuda:1`` -> ``("cuda", [1])``."""
    parsed = torch.device(device)
    if parsed.index is not None and parsed.type != "cpu":  # "cpu:0" is just the CPU
        if devices != 1:
            raise ConfigError(f"--devices {devices} needs a device type without an index, e.g. --device {parsed.type}")
        return parsed.type, [parsed.index]
    if devices < 1:
        raise ConfigError(f"--devices must be at least 1, got {devices}")
    return parsed.type, devices
