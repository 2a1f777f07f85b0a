"""Frozen SAM image-embedding cache: compute the image encoder's output once per image, train on it.

Layout of a cache folder::

    manifest.json                              signature, dtype, splits, image_id -> (shard, input size)
    <backend>-<signature hash>-00000.safetensors   one tensor per image, keyed by image_id (memory-mapped on read)

The signature is the backend name, the SAM view (class and parameters, e.g. ``Sam1View(size=1024)``) and
a hash of the weights of every module ``embed_images`` runs. A cache whose signature differs from the
model's is refused, never silently used. Shards and the manifest are written atomically (manifest last).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evf.data import Preprocessor
from evf.io import atomic_path, write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CacheError(ValueError):
    """A missing, stale or mismatched embedding cache; the message is one line naming the file."""


def weights_hash(modules: dict[str, nn.Module]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor of ``modules`` (sorted by name)."""
    digest = hashlib.sha256()
    for prefix in sorted(modules):
        for key, tensor in sorted(modules[prefix].state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{prefix}.{key}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()


def signature(sam) -> dict[str, str]:
    """What a cached embedding depends on: backend, view (class + parameters) and frozen weights."""
    return {"format": str(FORMAT_VERSION), "backend": sam.name, "view": repr(sam.image_view),
            "weights": weights_hash(sam.frozen_modules())}


def signature_id(sig: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FixedView:
    """Stands in for the SAM view inside ``Preprocessor.sample``: returns the cached embedding instead of pixels."""

    embedding: torch.Tensor
    input_size: tuple[int, int]

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.embedding, self.input_size


@dataclass
class CachedPreprocessor(Preprocessor):
    """The model's preprocessing with the SAM view replaced by a cache lookup: samples carry
    ``sam_embeddings`` (and the cached ``input_sizes``) instead of ``sam_images``."""

    cache: EmbeddingCache | None = None

    def sample(self, image: np.ndarray, **raw: Any) -> dict[str, Any]:
        embedding, input_size = self.cache.lookup(raw.get("image_id"))
        out = Preprocessor(self.encoder_view, self.tokenizer, FixedView(embedding, input_size)).sample(image, **raw)
        out["sam_embeddings"] = out.pop("sam_images")
        return out


class EmbeddingCache:
    """Read side of a cache folder. Picklable: shards are (re)opened lazily in each dataloader worker."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        if not self.manifest_path.is_file():
            raise CacheError(f"no embedding cache at {self.folder} (missing {MANIFEST}); build it with 'evf cache'")
        try:
            manifest = json.loads(self.manifest_path.read_text())
            self.signature: dict[str, str] = manifest["signature"]
            self.splits: list[str] = manifest["splits"]
            self.shards: list[str] = manifest["shards"]
            self.images: dict[str, list[int]] = manifest["images"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"unreadable embedding cache manifest {self.manifest_path}: {exc}") from None
        self._handles: dict[int, Any] = {}

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.images)

    def check(self, sam, geometric_augmentation: bool = False) -> EmbeddingCache:
        """Refuse a cache built for another backend, view or weights, or one combined with geometric augmentation."""
        if geometric_augmentation:
            raise CacheError(f"embedding cache {self.manifest_path} cannot be used with geometric augmentation of "
                             "the images (cached embeddings are of the unaugmented view): drop the cache or the augmentation")
        if sam is None:
            raise CacheError(f"embedding cache {self.manifest_path} needs the model's SAM backend to be validated: "
                             "attach(model.preprocessor(), sam=model.sam)")
        ours = signature(sam)
        for field in ("format", "backend", "view", "weights"):
            if self.signature.get(field) != ours[field]:
                raise CacheError(f"stale embedding cache {self.manifest_path}: built for {field} "
                                 f"{self.signature.get(field)!r}, the model has {ours[field]!r}; rebuild it with 'evf cache'")
        return self

    def preprocessor(self, base: Preprocessor) -> CachedPreprocessor:
        return CachedPreprocessor(base.encoder_view, base.tokenizer, base.sam_view, cache=self)

    def lookup(self, image_id: str | None) -> tuple[torch.Tensor, tuple[int, int]]:
        """``image_id`` -> (fp32 embedding, input size of the SAM view)."""
        entry = self.images.get(str(image_id)) if image_id is not None else None
        if entry is None:
            raise CacheError(f"image_id {image_id!r} is not in the embedding cache {self.manifest_path} "
                             f"(splits {', '.join(self.splits)}); rebuild it with 'evf cache'")
        shard, h, w = entry
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.folder / self.shards[shard]), framework="pt")
        return self._handles[shard].get_tensor(str(image_id)).float(), (h, w)


def unique_images(datasets: dict[str, Iterable[dict]]) -> Iterable[tuple[str, np.ndarray]]:
    seen: set[str] = set()
    for split, dataset in datasets.items():
        for sample in dataset:
            image_id = sample.get("image_id")
            if image_id is None:
                raise CacheError(f"split {split!r} yields samples without 'image_id': cannot key an embedding cache")
            if str(image_id) not in seen:
                seen.add(str(image_id))
                yield str(image_id), sample["image"]


@torch.no_grad()
def build_cache(sam, datasets: dict[str, Iterable[dict]], out: str | Path, batch_size: int = 4,
                shard_size: int = 256, dtype: str = "float32", progress: bool = True) -> EmbeddingCache:
    """Embed every distinct image of ``datasets`` ({split: raw dataset}) with ``sam`` and write the cache to ``out``."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sig = signature(sam)
    stem = f"{sam.name}-{signature_id(sig)}"
    view = sam.image_view
    device = next(sam.parameters()).device
    shards: list[str] = []
    images: dict[str, list[int]] = {}
    pending: list[tuple[str, torch.Tensor, tuple[int, int]]] = []
    shard: dict[str, torch.Tensor] = {}

    def flush_shard():
        if shard:
            name = f"{stem}-{len(shards):05d}.safetensors"
            with atomic_path(out / name) as tmp:
                save_file(shard, str(tmp))
            shards.append(name)
            shard.clear()

    def embed_pending():
        embeddings = sam.embed_images(torch.stack([x for _, x, _ in pending]).to(device))
        for (image_id, _, (h, w)), emb in zip(pending, embeddings):
            shard[image_id] = emb.to(DTYPES[dtype]).cpu().contiguous()
            images[image_id] = [len(shards), int(h), int(w)]
            if len(shard) >= shard_size:
                flush_shard()
        pending.clear()

    was_training = sam.training
    sam.eval()
    try:
        for image_id, image in tqdm(unique_images(datasets), desc=f"embedding ({sam.name})", unit="img", disable=not progress):
            x, input_size = view(image)
            pending.append((image_id, x, input_size))
            if len(pending) >= batch_size:
                embed_pending()
        if pending:
            embed_pending()
        flush_shard()
    finally:
        sam.train(was_training)
    manifest = {"format": FORMAT_VERSION, "signature": sig, "dtype": dtype, "splits": sorted(datasets),
                "shards": shards, "images": images}
    write_text_atomic(out / MANIFEST, json.dumps(manifest))
    for stale in out.glob("*-????????????-?????.safetensors"):  # shards of an earlier build, no longer named
        if stale.name not in shards:
            stale.unlink()
    return EmbeddingCache(out)
