"""Official release folders: export (save_pretrained), loading in the weights' footprint, dtype/device."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evf.checkpoint import iter_tensors, load_into, load_state_dict, write_safetensors
from evf.encoders import Beit3Encoder
from evf.model import EVFSAM
from evf.release import rename_official, to_official
from evf.sam import EfficientSamBackend, Sam1Backend, Sam2Backend

FAMILIES = {
    "sam1": lambda: Sam1Backend(variant="tiny"),
    "sam2.0": lambda: Sam2Backend(variant="toy", version="2.0"),
    "sam2.1": lambda: Sam2Backend(variant="toy", version="2.1"),
    "efficientsam": lambda: EfficientSamBackend(variant="toy"),
}


def random_model(family: str, seed: int = 0) -> EVFSAM:
    """Every parameter re-drawn, so a load that left anything at its initial value would show."""
    torch.manual_seed(seed)
    model = EVFSAM(Beit3Encoder(size="tiny"), FAMILIES[family]())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def all_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and every buffer, the non-persistent ones (SAM-1 pixel_mean / pixel_std) included."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def logits(model: EVFSAM, image: np.ndarray) -> torch.Tensor:
    pre = model.preprocessor()
    batch = pre.collate([pre({"image": image, "text": t}) for t in ("a cat", "the left one")])
    with torch.no_grad():
        return torch.stack([x.float() for x in model(batch)])


def load_the_old_way(folder, family: str) -> EVFSAM:
    """Random-weight fp32 model, then the file's state dict copied in: what from_pretrained did before."""
    model = EVFSAM(Beit3Encoder(size="tiny", tokenizer=str(folder)), FAMILIES[family]())
    weights = next(folder.glob("model.safetensors"), None) or folder / "pytorch_model.bin"
    load_into(model, rename_official(load_state_dict(weights)), str(weights))
    return model.eval()


def export(model: EVFSAM, folder, fmt: str = "safetensors", dtype=None):
    model.save_pretrained(folder, dtype=dtype)
    if fmt == "bin":  # the layout of the SAM-1 releases: a torch pickle of the official state dict
        torch.save(dict(iter_tensors(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_load_reproduces_the_model_exactly(family, tmp_path, rgb_image):
    model = random_model(family)
    folder = export(model, tmp_path / "release")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [{"sam1": "EvfSamModel", "efficientsam": "EvfEffiSamModel"}.get(family, "EvfSam2Model")]
    assert (config["mm_extractor_scale"], config["hidden_size"], config["out_dim"]) == ("tiny", 32, model.sam.prompt_dim)
    assert config["torch_dtype"] == "float32"
    assert {"sentencepiece.bpe.model", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    loaded = EVFSAM.from_pretrained(folder).eval()
    assert loaded.sam.name == model.sam.name
    expected, got = all_tensors(model), all_tensors(loaded)
    assert expected.keys() == got.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key
        assert got[key].requires_grad == expected[key].requires_grad, key
    torch.testing.assert_close(logits(loaded, rgb_image), logits(model, rgb_image), atol=0, rtol=0)


def test_exported_sam2_file_uses_the_release_names_and_reads_with_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = random_model("sam2.0")
    folder = model.save_pretrained(tmp_path / "release", dtype="float16")
    state = load_file(str(folder / "model.safetensors"))  # the library's own reader accepts our writer's file
    fuser = [k for k in state if ".fuser.layers." in k and k.count(".") == 5]
    assert fuser == ["visual_model.memory_encoder.fuser.layers.0.weight", "visual_model.memory_encoder.fuser.layers.1.weight"]
    assert not any(k.endswith(".gamma") for k in state)
    assert state.keys() == to_official(model.state_dict()).keys()
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "float16"
    ours = model.state_dict()["sam.model.memory_encoder.fuser.layers.1.gamma"]
    torch.testing.assert_close(state["visual_model.memory_encoder.fuser.layers.1.weight"], ours.half())


def test_sam2_backend_reads_an_evf_sam2_file(tmp_path):
    model = random_model("sam2.0")
    weights = tmp_path / "evf_sam2.safetensors"
    write_safetensors(weights, to_official(model.state_dict()))
    backend = Sam2Backend(variant="toy", checkpoint=str(weights))
    for key, value in backend.model.state_dict().items():
        assert torch.equal(value, model.sam.model.state_dict()[key]), key


def test_export_refuses_what_no_release_can_hold(tmp_path):
    model = random_model("sam1")
    model.encoder.mode, model.encoder.feature = "late", "concat_cls"
    with pytest.raises(ValueError, match="early-fusion"):
        model.save_pretrained(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a release folder"):
        random_model("sam1").save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("fmt,file_dtype", [("safetensors", torch.float16), ("bin", torch.float16), ("bin", torch.float32)])
def test_from_pretrained_builds_nothing_and_equals_the_old_way(fmt, file_dtype, tmp_path, rgb_image, monkeypatch):
    folder = export(random_model("sam1"), tmp_path / "release", fmt, file_dtype)
    old = load_the_old_way(folder, "sam1")
    seen, original = [], torch.nn.Module.load_state_dict

    def spy(module, state, strict=True, assign=False):
        if isinstance(module, EVFSAM):
            seen.append((assign, all(p.is_meta for p in module.parameters())))
        return original(module, state, strict=strict, assign=assign)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", spy)
    loaded = EVFSAM.from_pretrained(folder).eval()
    monkeypatch.undo()
    assert seen == [(True, True)]  # the file's tensors were assigned to a model that held no weights of its own
    expected, got = all_tensors(old), all_tensors(loaded)
    assert expected.keys() == got.keys()
    assert not any(t.is_meta for t in got.values())
    for key in expected:
        assert got[key].dtype == torch.float32 and torch.equal(got[key], expected[key]), key
    torch.testing.assert_close(logits(loaded, rgb_image), logits(old, rgb_image), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_from_pretrained_dtype_applies_to_every_floating_tensor(dtype, tmp_path):
    folder = export(random_model("sam1"), tmp_path / "release")
    fp32 = EVFSAM.from_pretrained(folder, device="cpu")
    loaded = EVFSAM.from_pretrained(folder, dtype=dtype, device=torch.device("cpu"))
    want = dtype if isinstance(dtype, torch.dtype) else torch.float16
    for key, value in all_tensors(loaded).items():
        reference = all_tensors(fp32)[key]
        assert value.device.type == "cpu" and value.dtype == (want if reference.is_floating_point() else reference.dtype), key
        assert torch.equal(value, reference.to(value.dtype)), key
    with pytest.raises(ValueError, match="unknown dtype"):
        EVFSAM.from_pretrained(folder, dtype="float17")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_from_pretrained_places_every_tensor_on_the_device(tmp_path, rgb_image):
    folder = export(random_model("sam1"), tmp_path / "release")
    loaded = EVFSAM.from_pretrained(folder, dtype=torch.float16, device="cuda")
    assert {t.device.type for t in all_tensors(loaded).values()} == {"cuda"}
    assert {t.dtype for t in all_tensors(loaded).values() if t.is_floating_point()} == {torch.float16}


def test_streamed_reads_are_exact_copies_in_every_layout(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    shared = torch.randn(3000)  # 12 kB: spans whole pages, so releasing them is exercised
    tensors = {"flags": torch.tensor([True, False, True]), "half": torch.randn(7, 13).half(),  # fp16 after 3 bytes
               "bf16": torch.randn(100).bfloat16(), "big": torch.randn(5000), "ints": torch.arange(11),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    files = {"ours.safetensors": lambda p: write_safetensors(p, tensors),  # in dict order: unaligned offsets
             "library.safetensors": lambda p: save_file(tensors, str(p)),
             "zip.bin": lambda p: torch.save({**tensors, "view": shared[1000:], "base": shared}, p),  # views share pages
             "legacy.bin": lambda p: torch.save(tensors, p, _use_new_zipfile_serialization=False)}
    for name, write in files.items():
        write(tmp_path / name)
        reference = torch.load(tmp_path / name, weights_only=True) if name.endswith(".bin") else tensors
        for dtype in (None, torch.float32, torch.float16):
            got = dict(iter_tensors(tmp_path / name, dtype=dtype))
            assert got.keys() == reference.keys(), name
            for key, value in reference.items():
                want = value.to(dtype) if dtype is not None and value.is_floating_point() else value
                assert got[key].dtype == want.dtype and torch.equal(got[key], want), (name, dtype, key)
        got = dict(iter_tensors(tmp_path / name))
        (tmp_path / name).write_bytes(b"\0" * (tmp_path / name).stat().st_size)  # in place: the copies must not see it
        assert torch.equal(got["big"], tensors["big"]), name


def test_truncated_safetensors_file_is_named_in_the_error(tmp_path):
    from evf.checkpoint import CheckpointError

    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"a": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*w\.safetensors"):
        list(iter_tensors(path))
