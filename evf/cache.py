"""Frozen SAM image-embedding cache: compute the image encoder's output once per image, train on it.

Layout of a cache folder::

    manifest.json                      signature, dataset identity, dtype, splits, image_id -> (shard, input size)
    <backend>-<signature hash>-<build>-00000.safetensors   one tensor per image, keyed by image_id (memory-mapped)

The signature is the backend name, the SAM view (class and parameters, e.g. ``Sam1View(size=1024)``) and
a hash of the weights of every module ``embed_images`` runs. The dataset identity is the image-loader
version, per split the number of samples and a hash of the image ids, and per image a digest of its
decoded pixels. A cache whose signature or dataset differs from the model's and datamodule's is refused,
never silently used.

A build writes a whole new folder beside the old one and swaps it in (``evf.io.atomic_dir``), holding
the cache's lock (``.<name>.lock`` beside it, ``evf.locks``): a kill leaves the old cache (or none), never
a mix, and a second writer stops with one line naming the first.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evf.config_errors import ConfigError
from evf.data import Preprocessor
from evf.errors import UserError
from evf.io import IMAGE_LOADER_VERSION, atomic_dir, atomic_path, leftover_siblings, write_text_atomic
from evf.locks import sibling_lock
from evf.predictor import placement

FORMAT_VERSION = 2  # 2: dataset identity and per-image pixel digests; build id in shard names
SPOT_CHECK_IMAGES = 4  # images per split decoded and compared with the manifest when a cache is attached
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CacheError(UserError, ValueError):
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
            self.dataset: dict[str, Any] = manifest.get("dataset") or {}  # absent before format 2
            self.digests: dict[str, str] = manifest.get("digests") or {}
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"unreadable embedding cache manifest {self.manifest_path}: {exc}") from None
        self._handles: dict[int, Any] = {}

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.images)

    def check(self, sam, geometric_augmentation: bool = False, datamodule=None) -> EmbeddingCache:
        """Refuse a cache built for another backend, view, weights or dataset (``datamodule``'s), or one
        combined with geometric augmentation."""
        if geometric_augmentation:
            raise CacheError(f"embedding cache {self.manifest_path} cannot be used with geometric augmentation of "
                             "the images (cached embeddings are of the unaugmented view): drop the cache or the augmentation")
        if sam is None:
            raise CacheError(f"embedding cache {self.manifest_path} needs the model's SAM backend to be validated: "
                             "attach(model.preprocessor(), sam=model.sam)")
        if self.signature.get("format") != str(FORMAT_VERSION):
            raise CacheError(f"stale embedding cache {self.manifest_path}: written in cache format "
                             f"{self.signature.get('format')}, this evf reads format {FORMAT_VERSION}; rebuild it with 'evf cache'")
        ours = signature(sam)
        for field in ("backend", "view", "weights"):
            if self.signature.get(field) != ours[field]:
                raise CacheError(f"stale embedding cache {self.manifest_path}: built for {field} "
                                 f"{self.signature.get(field)!r}, the model has {ours[field]!r}; rebuild it with 'evf cache'")
        if datamodule is not None:
            self.check_dataset(datamodule)
        return self

    def check_dataset(self, datamodule) -> None:
        """The image loader, each split's sample count and the first images' pixels must be the cache's."""
        loader = self.dataset.get("loader")
        if loader != IMAGE_LOADER_VERSION:
            raise CacheError(f"stale embedding cache {self.manifest_path}: its images were read by image loader version "
                             f"{loader}, this evf reads them with version {IMAGE_LOADER_VERSION} (e.g. EXIF orientation); "
                             "rebuild it with 'evf cache'")
        recorded_splits = self.dataset.get("splits") or {}
        for split in self.splits:
            recorded = recorded_splits.get(split) or {}
            dataset = datamodule.cache_images(split)
            if is_sequence(dataset) and recorded.get("samples") is not None and len(dataset) != recorded["samples"]:
                raise CacheError(f"embedding cache {self.manifest_path} was built for another dataset: split {split!r} had "
                                 f"{recorded['samples']} samples, the datamodule's has {len(dataset)}; rebuild it with 'evf cache'")
            for checked, (image_id, image) in enumerate(unique_images({split: dataset})):
                if checked == SPOT_CHECK_IMAGES:
                    break
                if image_id not in self.images:
                    raise CacheError(f"embedding cache {self.manifest_path} was built for another dataset: image_id "
                                     f"{image_id!r} of split {split!r} is not in it; rebuild it with 'evf cache'")
                if self.digests.get(image_id) != image_digest(image):
                    raise CacheError(f"embedding cache {self.manifest_path} was built for another dataset: image "
                                     f"{image_id!r} of split {split!r} has other pixels; rebuild it with 'evf cache'")

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

            path = self.folder / self.shards[shard]
            if not path.is_file():  # shard names carry the build id: a rebuilt cache never serves this manifest
                raise CacheError(f"embedding cache {self.folder} was rebuilt or damaged while in use ({path.name} is gone); "
                                 "restart the run")
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard].get_tensor(str(image_id)).float(), (h, w)


def is_sequence(dataset) -> bool:
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


def samples(dataset: Iterable[dict]) -> Iterator[dict]:
    """Each sample once. Indexed up to ``len``: a train-mode dataset accepts any index (item ``p % n`` of
    epoch ``p // n``) and would never end under plain iteration."""
    if is_sequence(dataset):
        return (dataset[k] for k in range(len(dataset)))
    return iter(dataset)


def unique_images(datasets: dict[str, Iterable[dict]]) -> Iterator[tuple[str, np.ndarray]]:
    seen: set[str] = set()
    for split, dataset in datasets.items():
        for sample in samples(dataset):
            image_id = sample.get("image_id")
            if image_id is None:
                raise CacheError(f"split {split!r} yields samples without 'image_id': cannot key an embedding cache")
            if str(image_id) not in seen:
                seen.add(str(image_id))
                yield str(image_id), sample["image"]


def image_digest(image: np.ndarray) -> str:
    """Digest of decoded pixels (shape, dtype and bytes): the image an embedding was computed from."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(f"{array.dtype}|{array.shape}".encode(), digest_size=12)
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def hash_lines(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


class IdentityRecorder:
    """Walks the splits once for ``build_cache``: yields each distinct image and records the dataset identity."""

    def __init__(self, datasets: dict[str, Iterable[dict]]):
        self.datasets = datasets
        self.digests: dict[str, str] = {}
        self.splits: dict[str, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for split, dataset in self.datasets.items():
            count, ids = 0, set()
            for sample in samples(dataset):
                count += 1
                for image_id, image in unique_images({split: [sample]}):
                    ids.add(image_id)
                    if image_id not in self.digests:
                        self.digests[image_id] = image_digest(image)
                        yield image_id, image
            self.splits[split] = {"samples": count, "images": len(ids), "ids": hash_lines(sorted(ids)),
                                  "pixels": hash_lines(f"{i}:{self.digests[i]}" for i in sorted(ids))}


@torch.no_grad()
def build_cache(sam, datasets: dict[str, Iterable[dict]], out: str | Path, batch_size: int = 4,
                shard_size: int = 256, dtype: str = "float32", progress: bool = True, source: str | None = None,
                lock: bool = True) -> EmbeddingCache:
    """Embed every distinct image of ``datasets`` ({split: raw dataset}) with ``sam`` and write the cache to ``out``.

    ``source`` names the datamodule in the manifest; ``lock=False`` when the caller already holds ``cache_lock(out)``.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out)
    with cache_lock(out) if lock else contextlib.nullcontext():
        for leftover in leftover_siblings(out):  # of killed builds; ours alone now that we hold the lock
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        with atomic_dir(out) as folder:
            write_cache_folder(sam, IdentityRecorder(datasets), folder, batch_size, shard_size, dtype, progress, source)
    return EmbeddingCache(out)


def cache_lock(out: str | Path):
    return sibling_lock(out, "embedding cache")


def write_cache_folder(sam, images: IdentityRecorder, folder: Path, batch_size: int, shard_size: int, dtype: str,
                       progress: bool, source: str | None) -> None:
    from safetensors.torch import save_file  # noqa: TID251 - shards are written inside atomic_dir's temporary folder
    from tqdm.auto import tqdm

    sig = signature(sam)
    build = uuid.uuid4().hex[:8]
    stem = f"{sam.name}-{signature_id(sig)}-{build}"
    view = sam.image_view
    device, weights_dtype = placement(sam)
    shards: list[str] = []
    entries: dict[str, list[int]] = {}
    pending: list[tuple[str, torch.Tensor, tuple[int, int]]] = []
    shard: dict[str, torch.Tensor] = {}

    def flush_shard():
        if shard:
            name = f"{stem}-{len(shards):05d}.safetensors"
            with atomic_path(folder / name) as tmp:
                save_file(shard, str(tmp))
            shards.append(name)
            shard.clear()

    def embed_pending():
        embeddings = sam.embed_images(torch.stack([x for _, x, _ in pending]).to(device, weights_dtype))
        for (image_id, _, (h, w)), emb in zip(pending, embeddings):
            shard[image_id] = emb.to(DTYPES[dtype]).cpu().contiguous()
            entries[image_id] = [len(shards), int(h), int(w)]
            if len(shard) >= shard_size:
                flush_shard()
        pending.clear()

    was_training = sam.training
    sam.eval()
    try:
        for image_id, image in tqdm(images, desc=f"embedding ({sam.name})", unit="img", disable=not progress):
            x, input_size = view(image)
            pending.append((image_id, x, input_size))
            if len(pending) >= batch_size:
                embed_pending()
        if pending:
            embed_pending()
        flush_shard()
    finally:
        sam.train(was_training)
    dataset = {"source": source, "loader": IMAGE_LOADER_VERSION, "splits": images.splits}
    manifest = {"format": FORMAT_VERSION, "build": build, "signature": sig, "dataset": dataset, "dtype": dtype,
                "splits": sorted(images.datasets), "shards": shards, "images": entries, "digests": images.digests}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest))
