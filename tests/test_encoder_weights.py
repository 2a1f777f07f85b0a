"""CLIP and ViLT weights in their real release formats (tiny random models written here) load strictly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from evf.checkpoint import CheckpointError
from evf.cli import main
from evf.encoders import ClipEncoder, ViltEncoder
from evf.encoders.vilt import TINY_VILT, toy_vocab_dir

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore:No seed found")

TEXTS = ["the red square", "a circle on the left"]


def features(enc, seed=0):
    rng = np.random.default_rng(seed)
    imgs = torch.stack([enc.image_view(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)) for _ in TEXTS])
    t = enc.tokenizer(TEXTS)
    with torch.no_grad():
        return enc.eval()(imgs, t["input_ids"], t["padding_mask"])


@pytest.mark.parametrize("filename,prefix", [("open_clip_pytorch_model.bin", ""), ("open_clip_model.safetensors", ""),
                                             ("ddp.pt", "module.")])
def test_clip_loads_open_clip_state_dict(tmp_path, filename, prefix):
    torch.manual_seed(0)
    source = ClipEncoder("tiny", mode="late")
    state = {prefix + k: v.clone() for k, v in source.clip.state_dict().items()}
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    loaded = ClipEncoder("tiny", mode="late", checkpoint=str(path))
    torch.testing.assert_close(features(loaded), features(source), rtol=0, atol=0)
    text_only = ClipEncoder("tiny", mode="text", checkpoint=str(path))  # image tower loaded strictly, then dropped
    assert text_only.clip.visual is None
    torch.testing.assert_close(features(text_only), features(source)[:, : source.out_dim // 2], rtol=0, atol=0)


def test_clip_rejects_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "broken.bin"
    state = ClipEncoder("tiny", mode="late").clip.state_dict()
    state.pop("token_embedding.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"broken\.bin.*1 missing \(e\.g\. token_embedding\.weight\)"):
        ClipEncoder("tiny", checkpoint=str(path))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipEncoder("ViT-Q-99")


def write_vilt_release(folder, seed=0):
    """A dandelin/vilt-b32-mlm-shaped folder: ViltForMaskedLM via save_pretrained + BERT vocab.txt."""
    from transformers import ViltConfig, ViltForMaskedLM

    torch.manual_seed(seed)
    model = ViltForMaskedLM(ViltConfig(**TINY_VILT)).eval()
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text((toy_vocab_dir() / "vocab.txt").read_text())
    return model


def test_vilt_loads_a_release_folder_strictly(tmp_path):
    model = write_vilt_release(tmp_path)
    enc = ViltEncoder(pretrained=str(tmp_path), mode="early")
    for name, value in model.vilt.state_dict().items():
        assert torch.equal(enc.vilt.state_dict()[name], value), name
    assert enc.tokenizer.path == str(tmp_path)
    assert enc.out_dim == TINY_VILT["hidden_size"]
    ids = enc.tokenizer(["the red square"])["input_ids"][0].tolist()
    assert ids[0] == enc.tokenizer.tok.cls_token_id and enc.tokenizer.tok.unk_token_id not in ids
    # The early feature is ViLT's own pooled output for the same tokens (full-resolution image, all patches kept).
    img = torch.randn(1, 3, TINY_VILT["image_size"], TINY_VILT["image_size"])
    t = enc.tokenizer(["the red square"])
    with torch.no_grad():
        ours = enc.eval()(img, t["input_ids"], t["padding_mask"])
        theirs = model.vilt(input_ids=t["input_ids"], attention_mask=(~t["padding_mask"]).long(), pixel_values=img).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_vilt_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        ViltEncoder(pretrained=str(tmp_path / "missing"))
    write_vilt_release(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        ViltEncoder(pretrained=str(tmp_path))


def test_missing_weights_fail_at_fit_with_one_line(tmp_path, capsys):
    config = {"model": {"model": {"encoder": {"class_path": "evf.encoders.ClipEncoder",
                                              "init_args": {"model": "tiny", "checkpoint": str(tmp_path / "nope.bin")}},
                                  "sam": {"class_path": "evf.sam.Sam1Backend", "init_args": {"variant": "tiny"}}}},
              "data": {"class_path": "datamodules.SyntheticRefDataModule", "init_args": {"train_size": 2}},
              "trainer": {"accelerator": "cpu", "logger": False, "default_root_dir": str(tmp_path)}}
    path = tmp_path / "row.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path), "--print_config"]) == 0  # parsing needs no files
    capsys.readouterr()
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"evf: error: checkpoint not found: {tmp_path / 'nope.bin'}"
