"""`evf cache` into a folder that holds a cache: one writer at a time, a kill leaves the old cache whole,
and a cache of other images (or of the older image loader) is refused by the datamodule."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from evf.cache import MANIFEST, CacheError, EmbeddingCache, build_cache
from evf.cli import main as evf_main
from evf.loading import load
from tests.lock_helpers import Forked, PausingSyntheticDataModule, cache_config, kill
from tests.training_helpers import REPO, evf_command, subprocess_env, wait_for

QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")


def cache_argv(config, out, *extra) -> list[str]:
    return ["cache", "--config", QUICKSTART, "--config", str(config), "--split", "train", "--out", str(out),
            "--batch-size", "1", "--shard-size", "1", *extra]


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def model():
    return load([QUICKSTART], datamodule=False).model  # seeded: the same SAM weights as every `evf cache` here


def attach(model, cache, seed: int, **sizes) -> PausingSyntheticDataModule:
    """What `evf fit` does at setup: the datamodule validates ``cache`` against itself and the model."""
    dm = PausingSyntheticDataModule(seed=seed, embedding_cache=str(cache), **sizes)
    return dm.attach(model.preprocessor(), sam=model.sam)


def test_sigkill_mid_rebuild_and_a_second_writer(tmp_path, capsys):
    """Old cache (seed 1 images); a rebuild with other images (seed 2) is SIGKILLed mid-way while `evf cache`
    tries the same folder: that one is refused in one line, the old cache stays whole and valid, and the next
    build (after the crash) replaces it completely."""
    from tests.cache_writer import ImagesOf, tiny_sam, write

    out, marker = tmp_path / "cache", tmp_path / "paused"
    write(out, seed=1)
    old = snapshot(out)
    writer = Forked(write, str(out), 2, 3, str(marker))  # pauses before image 3 of 4, until killed
    try:
        wait_for(marker, writer)
        building = [p for p in tmp_path.glob(".cache.*.tmp") if p.is_dir()]
        assert len(building) == 1 and len(list(building[0].glob("*.safetensors"))) == 3  # really mid-rebuild
        capsys.readouterr()
        assert evf_main(["cache", "--config", QUICKSTART, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"embedding cache {out} is in use by pid {writer.pid} on host " in error
        assert str(tmp_path / ".cache.lock") in error
    finally:
        kill(writer)
    assert snapshot(out) == old  # byte for byte: no shard of the killed build reached the cache
    sam = tiny_sam()
    EmbeddingCache(out).check(sam, datamodule=ImagesOf(1))
    with pytest.raises(CacheError, match=r"built for another dataset: image 'train-0' of split 'train' has other pixels"):
        EmbeddingCache(out).check(sam, datamodule=ImagesOf(2))

    write(out, seed=2)  # the killed writer's lock is stale: broken, not in the way
    EmbeddingCache(out).check(sam, datamodule=ImagesOf(2))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock, no leftovers
    assert not set(snapshot(out)) & set(old) - {MANIFEST}  # every shard is new (shard names carry the build id)


@pytest.mark.slow  # two more processes; the test above already shows a second writer refused in one line
def test_two_writers_exactly_one_succeeds(tmp_path, model):
    """Both start; the first holds the folder until the second has given up with one line and exit 2."""
    out, marker, resume = tmp_path / "cache", tmp_path / "paused", tmp_path / "resume"
    first_config = cache_config(tmp_path / "a.yaml", seed=1, pause_at=1, marker=str(marker), resume=str(resume))
    first = subprocess.Popen(evf_command(*cache_argv(first_config, out)), cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker, first)
        second = subprocess.run(evf_command(*cache_argv(cache_config(tmp_path / "b.yaml", seed=2), out)), cwd=REPO,
                                env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
        resume.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"evf: error: embedding cache {out} is in use by pid {first.pid}")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["dataset"]["source"] == "tests.lock_helpers.PausingSyntheticDataModule"
    attach(model, out, seed=1)  # the cache is the first writer's, complete


def test_cache_of_an_older_image_loader_or_other_sizes_is_refused(tmp_path, monkeypatch, model):
    dm = PausingSyntheticDataModule(seed=1)
    build_cache(model.sam, {"train": dm.cache_images("train")}, tmp_path / "c", progress=False)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["dataset"]["splits"]["train"]["samples"] == 4 and manifest["dataset"]["splits"]["train"]["images"] == 4
    attach(model, tmp_path / "c", seed=1)
    with pytest.raises(CacheError, match="split 'train' had 4 samples, the datamodule's has 3"):
        attach(model, tmp_path / "c", seed=1, train_size=3)
    monkeypatch.setattr("evf.cache.IMAGE_LOADER_VERSION", 3)
    with pytest.raises(CacheError, match="read by image loader version 2, this evf reads them with version 3") as info:
        attach(model, tmp_path / "c", seed=1)
    assert "\n" not in str(info.value)


def test_a_cache_of_format_1_is_refused(tmp_path, model):
    build_cache(model.sam, {"train": PausingSyntheticDataModule(seed=1).cache_images("train")}, tmp_path / "c", progress=False)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    manifest["signature"]["format"] = manifest["format"] = "1"
    for key in ("dataset", "digests", "build"):
        del manifest[key]
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="written in cache format 1, this evf reads format 2"):
        attach(model, tmp_path / "c", seed=1)


def test_a_train_mode_dataset_is_walked_once(tmp_path, model):
    """File datasets accept any index in train mode (item p % n of epoch p // n): the walk stops at len."""
    from datamodules import RefCocoDataModule

    dm = RefCocoDataModule(root="fixture")
    cache = build_cache(model.sam, {"train": dm.cache_images("train")}, tmp_path / "c", progress=False)
    dataset = dm.raw_dataset("train")
    assert len(cache) == len({dataset[k]["image_id"] for k in range(len(dataset))})
    dm.embedding_cache = str(tmp_path / "c")
    dm.attach(model.preprocessor(), sam=model.sam)
    embedding, _ = cache.lookup(dataset[0]["image_id"])
    assert torch.isfinite(embedding).all()


def test_a_cache_rebuilt_under_a_reader_stops_the_reader(tmp_path):
    """A run that opened the cache before a rebuild never reads the new build's shards through its old manifest."""
    from tests.cache_writer import write

    write(tmp_path / "c", seed=1)
    reader = EmbeddingCache(tmp_path / "c")
    write(tmp_path / "c", seed=1)
    with pytest.raises(CacheError, match=r"embedding cache .*c was rebuilt or damaged while in use \(sam1_tiny-.*-00000"):
        reader.lookup("train-0")
    torch.testing.assert_close(EmbeddingCache(tmp_path / "c").lookup("train-0")[0], write(tmp_path / "d", seed=1).lookup("train-0")[0])
