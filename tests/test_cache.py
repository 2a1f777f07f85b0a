"""Frozen-embedding cache: same loss and gradients as recomputing, stale caches and augmentation refused."""
from __future__ import annotations

import json

import pytest
import torch

from datamodules import SyntheticRefDataModule
from evf.cache import MANIFEST, CacheError, EmbeddingCache, build_cache
from evf.encoders import Beit3Encoder
from evf.model import EVFSAM
from evf.sam import SAM_BACKENDS

# Every registered backend, plus SAM-2 with a frozen decoder: conv_s0/conv_s1 then fold into the cached embedding.
BACKENDS = {**{name: {} for name in SAM_BACKENDS}, "sam2-frozen-decoder": {"train_mask_decoder": False}}


def make_model(backend: str, seed: int = 0, **kwargs) -> EVFSAM:
    torch.manual_seed(seed)
    name = backend.removesuffix("-frozen-decoder")
    return EVFSAM(Beit3Encoder(size="tiny"), SAM_BACKENDS.create(name, tiny=True, **{**BACKENDS.get(backend, {}), **kwargs}))


def datamodule(cache=None, **kwargs) -> SyntheticRefDataModule:
    dm = SyntheticRefDataModule(train_size=4, val_size=2, test_size=2, batch_size=2, image_size=48, **kwargs)
    dm.embedding_cache = str(cache) if cache else None
    return dm


def write_cache(model: EVFSAM, folder, splits=("train",), **kwargs) -> EmbeddingCache:
    dm = datamodule()
    return build_cache(model.sam, {s: dm.raw_dataset(s) for s in splits}, folder, progress=False, **kwargs)


def loss_and_grads(model: EVFSAM, dm: SyntheticRefDataModule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    dataset = dm.dataset("train", train=True)
    batch = dm.preprocessor.collate([dataset[i] for i in range(len(dataset))])
    model.zero_grad()
    loss = model.loss(model(batch), batch["masks"])["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_training_on_the_cache_gives_the_same_loss_and_gradients(backend, tmp_path):
    model = make_model(backend).train()
    write_cache(model, tmp_path / "cache", batch_size=3, shard_size=3)  # batching/sharding differ from training's
    plain = datamodule().attach(model.preprocessor())
    cached = datamodule(tmp_path / "cache").attach(model.preprocessor(), sam=model.sam)
    sample = cached.dataset("train")[0]
    assert "sam_embeddings" in sample and "sam_images" not in sample  # the SAM view is not even computed
    loss_a, grads_a = loss_and_grads(model, plain)
    loss_b, grads_b = loss_and_grads(model, cached)
    assert torch.isfinite(loss_a) and abs(loss_a - loss_b) <= 1e-6
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-6, rtol=0, msg=name)


def test_uncached_splits_fall_back_to_the_image_encoder(tmp_path):
    model = make_model("sam1")
    write_cache(model, tmp_path / "c", splits=("train",))
    dm = datamodule(tmp_path / "c").attach(model.preprocessor(), sam=model.sam)
    assert "sam_images" in dm.dataset("val")[0] and "sam_embeddings" in dm.dataset("train")[0]
    with pytest.raises(CacheError, match="image_id 'val-0' is not in the embedding cache"):
        dm.cache.lookup("val-0")


@pytest.mark.parametrize("other,field", [
    (lambda: make_model("sam2"), "backend"),
    (lambda: make_model("sam1", seed=1), "weights"),
])
def test_a_stale_cache_is_refused_with_one_line_naming_the_file(tmp_path, other, field):
    write_cache(make_model("sam1"), tmp_path / "c")
    model = other()
    with pytest.raises(CacheError, match=f"stale embedding cache .*{MANIFEST}: built for {field}") as info:
        datamodule(tmp_path / "c").attach(model.preprocessor(), sam=model.sam)
    assert "\n" not in str(info.value)


def test_a_cache_of_another_preprocessing_is_refused(tmp_path):
    write_cache(make_model("sam2"), tmp_path / "c")
    model = make_model("sam2", resize="pil")  # same backend and weights, different SAM view
    with pytest.raises(CacheError, match=r"built for view .SquareStretchView\(size=128, resize='tensor'\)"):
        datamodule(tmp_path / "c").attach(model.preprocessor(), sam=model.sam)


def test_cache_with_geometric_augmentation_is_refused(tmp_path):
    class Augmenting(SyntheticRefDataModule):
        geometric_augmentation = True

    model = make_model("sam1")
    write_cache(model, tmp_path / "c")
    dm = Augmenting(train_size=4, batch_size=2, image_size=48)
    dm.embedding_cache = str(tmp_path / "c")
    with pytest.raises(CacheError, match="geometric augmentation"):
        dm.attach(model.preprocessor(), sam=model.sam)


def test_missing_or_unvalidated_cache_is_refused(tmp_path):
    model = make_model("sam1")
    with pytest.raises(CacheError, match="no embedding cache at"):
        datamodule(tmp_path / "nothing").attach(model.preprocessor(), sam=model.sam)
    write_cache(model, tmp_path / "c")
    with pytest.raises(CacheError, match="needs the model's SAM backend"):
        datamodule(tmp_path / "c").attach(model.preprocessor())


def test_half_precision_storage_and_rebuild_replaces_old_shards(tmp_path):
    model = make_model("sam1")
    full = write_cache(model, tmp_path / "c", shard_size=2)
    reference = full.lookup("train-1")[0]
    half = write_cache(make_model("sam2"), tmp_path / "c", dtype="float16", shard_size=8)  # another backend, same folder
    assert sorted(p.name for p in (tmp_path / "c").glob("*.safetensors")) == half.shards
    assert json.loads((tmp_path / "c" / MANIFEST).read_text())["dtype"] == "float16"
    again = write_cache(model, tmp_path / "c", dtype="float16")
    embedding, size = again.lookup("train-1")
    assert embedding.dtype == torch.float32 and size == full.lookup("train-1")[1]
    torch.testing.assert_close(embedding, reference, atol=1e-2, rtol=1e-2)


def test_evf_cache_command_builds_what_training_accepts(tmp_path, capsys):
    import evf
    from evf.cli import main

    override = tmp_path / "small.yaml"
    override.write_text("data:\n  class_path: datamodules.SyntheticRefDataModule\n"
                        "  init_args: {train_size: 3, val_size: 2, test_size: 2, batch_size: 2, image_size: 48}\n")
    configs = ["experiments/quickstart.yaml", str(override)]
    argv = ["cache", *[a for c in configs for a in ("--config", c)], "--split", "train", "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    assert "3 image embeddings" in capsys.readouterr().out
    model, dm, *_ = evf.load(configs)  # a fresh build from the same YAML (same seed) validates
    dm.embedding_cache = str(tmp_path / "c")
    dm.attach(model.preprocessor(), sam=model.sam)
    assert dm.cache.splits == ["train"] and len(dm.cache) == 3
    assert main(["cache", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "d")]) == 2


def test_hybrid_cache_keys_images_by_source_and_covers_every_epoch(tmp_path):
    """Two sources whose image ids collide ("train-0" ...): each image keeps its own embedding."""
    from datamodules.hybrid import HybridDataModule

    model = make_model("sam1")
    spec = {"type": "synthetic", "train_size": 3, "val_size": 2, "test_size": 2, "image_size": 48}
    dm = HybridDataModule({"a": {**spec, "seed": 1}, "b": {**spec, "seed": 2}}, samples_per_epoch=4, batch_size=2)
    cache = build_cache(model.sam, {"train": dm.cache_images("train")}, tmp_path / "cache", progress=False)
    assert sorted(cache.images) == [f"{s}/train-{k}" for s in "ab" for k in range(3)]  # 6, not 3 colliding ids
    stream = dm.raw_dataset("train")
    positions = range(40)  # ten epochs of the stream
    assert {stream[p]["source"] for p in positions} == {"a", "b"}
    model.eval()
    for p in positions[:8]:
        sample = stream[p]
        cached, _ = cache.lookup(sample["image_id"])
        pixels, _ = model.sam.image_view(sample["image"])
        with torch.no_grad():
            direct = model.sam.embed_images(pixels[None])[0]
        torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-5)
    for p in positions:  # every image any epoch draws is in the cache
        cache.lookup(stream[p]["image_id"])
