"""Named model presets: evf.list_models / evf.create_model, the same preset named from YAML, official release
folders loaded into their preset (another family refused in one line), and plugins discovered from one
registration line."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import evf
from evf import release
from evf.checkpoint import CheckpointError
from evf.encoders import ENCODERS, Beit3Encoder
from evf.model import EVFSAM
from evf.presets import PRESETS, get_preset, tiny_presets
from evf.sam import SAM_BACKENDS, Sam1Backend, Sam2Backend
from tests.tiny_artifacts import write_release_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = sorted(tiny_presets())
NAME = re.compile(r"^(evf-(sam|sam2|sam2\.1|effisam)-[a-z0-9-]+-(samh|hieral|hierat|effisams|effisamti)|tiny-[a-z0-9_.]+-[a-z0-9_.]+)$")
# Official release layout (architectures, sam_scale, mm_extractor_scale) of the presets that have one.
LAYOUTS = {
    "evf-sam-beit3l-samh": ("EvfSamModel", "huge", "large"),
    "evf-sam-beit3b-samh": ("EvfSamModel", "huge", "base"),
    "evf-sam2-beit3l-hieral": ("EvfSam2Model", "large", "large"),
    "evf-sam2-beit3l-hierat": ("EvfSam2Model", "tiny", "large"),
    "evf-sam2.1-beit3l-hieral": ("EvfSam2Model", "large", "large"),
    "evf-effisam-beit3l-effisams": ("EvfEffiSamModel", "small", "large"),
    "evf-effisam-beit3l-effisamti": ("EvfEffiSamModel", "tiny", "large"),
}
# Paper rows (experiments/ablations, layered on base.yaml) -> the preset naming the same architecture.
ROWS = {
    "tab4_beit3_early_l1-24": "evf-sam-beit3l-samh", "tab5_beit3_l_sam_h": "evf-sam-beit3l-samh",
    "tab4_beit3_early_l1-12": "evf-sam-beit3l-l1-12-samh", "tab4_beit3_late": "evf-sam-beit3l-late-samh",
    "tab4_beit3_text": "evf-sam-beit3l-text-samh", "tab5_beit3_b_sam_h": "evf-sam-beit3b-samh",
    "tab5_beit3_l_sam2_l": "evf-sam2-beit3l-hieral", "tab5_beit3_l_efficientsam_s": "evf-effisam-beit3l-effisams",
    **{f"tab4_clip_{s}_{w}_{m}": f"evf-sam-clip{s}-{w}-{m}-samh"
       for s, w in (("l", "openai"), ("l", "laion2b"), ("h", "laion2b")) for m in ("text", "late")},
    "tab5_clip_l_sam_h": "evf-sam-clipl-openai-text-samh",
    "tab4_vilt_early": "evf-sam-vilt-samh", "tab5_vilt_sam_h": "evf-sam-vilt-samh",
    "tab4_vilt_text": "evf-sam-vilt-text-samh", "tab4_vilt_late": "evf-sam-vilt-late-samh",
}
WEIGHT_ARGS = ("checkpoint", "tokenizer", "pretrained")
PRESET_FIT_YAML = """\
seed_everything: 0
model:
  model:
    class_path: evf.create_model
    init_args: {{name: tiny-beit3-sam1, sam: {{checkpoint: {sam_weights}}}}}
  lr: 1.0e-3
data:
  class_path: datamodules.SyntheticRefDataModule
  init_args: {{train_size: 4, val_size: 2, test_size: 2, batch_size: 2, image_size: 48}}
trainer: {{accelerator: cpu, max_steps: 1, limit_val_batches: 1, enable_progress_bar: false, enable_model_summary: false}}
"""  # where the weights live, not what the model is


def full_args(cls: type, args: dict) -> dict:
    """Every constructor argument: the class defaults overlaid with ``args``, weight paths left out."""
    bound = inspect.signature(cls).bind(**args)  # fails on an argument the plugin does not take
    bound.apply_defaults()
    return {k: str(v) if k == "version" else v for k, v in bound.arguments.items() if k not in WEIGHT_ARGS}


# -- listing --------------------------------------------------------------------------------------
def test_list_models_lists_every_preset_with_consistent_names():
    names = evf.list_models()
    assert names == sorted({*PRESETS, *TINY}) and len(names) == len(PRESETS) + len(TINY)
    assert all(NAME.match(n) for n in names), [n for n in names if not NAME.match(n)]
    assert evf.list_models("evf-sam2*") == ["evf-sam2-beit3l-hieral", "evf-sam2-beit3l-hierat", "evf-sam2.1-beit3l-hieral"]
    assert evf.list_models("tiny-*") == TINY and "tiny-beit3-sam1" in TINY
    with pytest.raises(ValueError, match=r"unknown model preset 'evf-sam-beit3-samh' \(did you mean 'evf-sam-beit3l-samh'\?\)"):
        evf.create_model("evf-sam-beit3-samh")


def test_import_evf_is_cheap():
    """``import evf`` (what the ``evf`` command starts with) loads neither torch nor the presets."""
    import subprocess
    import sys

    code = "import sys, evf; print(sorted(m for m in ('torch', 'evf.presets', 'evf.model') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
    # nor does the file-writing layer: the kill tests' writer processes start in a fraction of a second
    code = "import sys, evf.io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


# -- building ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_every_tiny_preset_builds_and_predicts(name, rgb_image):
    preset = get_preset(name)
    torch.manual_seed(0)
    model = evf.create_model(name).eval()
    assert type(model.encoder) is ENCODERS.get(preset.encoder).cls and type(model.sam) is SAM_BACKENDS.get(preset.sam).cls
    masks = model.predict(rgb_image, ["the red square", "a circle"])
    assert masks.shape == (2, *rgb_image.shape[:2]) and masks.dtype == torch.bool


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_full_size_preset_names_its_plugins_arguments(name):
    preset = PRESETS[name]
    full_args(ENCODERS.get(preset.encoder).cls, preset.encoder_args)
    full_args(SAM_BACKENDS.get(preset.sam).cls, preset.sam_args)
    assert preset.about and "\n" not in preset.about


@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if PRESETS[n].encoder == "beit3"])
def test_beit3_presets_on_meta_hold_their_official_layout(name):
    """Built weightless (no memory): the release layout ``save_pretrained`` writes for the preset, or none."""
    preset = PRESETS[name]
    with release.parameters_on_meta():
        model = EVFSAM(ENCODERS.create("beit3", **preset.encoder_args), SAM_BACKENDS.create(preset.sam, **preset.sam_args))
    if name not in LAYOUTS:
        with pytest.raises(ValueError, match="early-fusion"):
            release.encoder_size(model.encoder)
        return
    assert (*release.official_architecture(model.sam), release.encoder_size(model.encoder)) == LAYOUTS[name]
    assert getattr(model.sam, "version", None) == preset.sam_args.get("version")
    if name == "evf-sam-beit3l-samh":  # the parameter count of the official EVF-SAM (spec §10)
        assert sum(p.numel() for p in model.parameters()) == 1_315_105_072


@pytest.mark.parametrize("row", sorted(ROWS))
def test_paper_rows_and_presets_name_the_same_model(row):
    """A preset and its experiments/ablations row (layered on base.yaml) build the same plugins with the same
    arguments, weight paths aside."""
    base = yaml.safe_load((ROOT / "experiments" / "base.yaml").read_text())["model"]["model"]
    override = (yaml.safe_load((ROOT / "experiments" / "ablations" / f"{row}.yaml").read_text()) or {}).get("model", {})
    preset = PRESETS[ROWS[row]]
    for slot, registry, name, args in (("encoder", ENCODERS, preset.encoder, preset.encoder_args),
                                       ("sam", SAM_BACKENDS, preset.sam, preset.sam_args)):
        spec = override.get("model", {}).get(slot, {})
        class_path = spec.get("class_path", base[slot]["class_path"])
        row_args = {**(base[slot]["init_args"] if class_path == base[slot]["class_path"] else {}), **spec.get("init_args", {})}
        cls = registry.get(name).cls
        assert class_path.rpartition(".")[2] == cls.__name__, slot
        assert full_args(cls, row_args) == full_args(cls, args), slot


# -- YAML ----------------------------------------------------------------------------------------
def test_yaml_names_the_same_model_as_python(tmp_path):
    torch.manual_seed(0)  # the YAML seeds itself (seed_everything: 0)
    from_yaml = evf.load(ROOT / "experiments" / "quickstart.yaml", datamodule=False).model
    torch.manual_seed(0)
    from_python = evf.create_model("tiny-beit3-sam1")
    assert from_yaml.state_dict().keys() == from_python.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(from_yaml.state_dict().values(), from_python.state_dict().values()))

    config = tmp_path / "preset.yaml"  # with overrides for a plugin and for EVFSAM
    config.write_text("model:\n  model:\n    class_path: evf.create_model\n    init_args:\n      name: tiny-beit3-sam2\n"
                      "      sam: {train_mask_decoder: false, train_prompt_encoder: false}\n"
                      "      train_encoder: false\n")
    torch.manual_seed(0)
    from_yaml = evf.load(config, datamodule=False).model  # no data: section, no seed: the RNG as it is
    torch.manual_seed(0)
    from_python = evf.create_model("tiny-beit3-sam2", sam={"train_mask_decoder": False, "train_prompt_encoder": False},
                                   train_encoder=False)
    trainable = {n for n, p in from_python.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in from_yaml.named_parameters() if p.requires_grad} == {
        n for n, p in from_python.named_parameters() if n.startswith("projector.")}
    assert all(torch.equal(a, b) for a, b in zip(from_yaml.state_dict().values(), from_python.state_dict().values()))


def test_a_preset_run_config_round_trips(tmp_path, capsys):
    """``evf fit`` on a preset saves config.yaml naming it; ``evf test --config RUN/config.yaml`` and the
    ``.ckpt`` loader of ``evf predict`` rebuild the same model from it."""
    from evf.cli import main
    from tests.tiny_artifacts import write_fit_config

    write_fit_config(tmp_path)  # its tiny SAM-1 weights file: frozen weights come from a file, so a rebuild is exact
    config = tmp_path / "preset_fit.yaml"
    config.write_text(PRESET_FIT_YAML.format(sam_weights=tmp_path / "sam_tiny.safetensors"))
    run = tmp_path / "run_dir"
    assert main(["fit", "--config", str(config), "--run_dir", str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["model"]
    assert saved["class_path"] == "evf.create_model" and saved["init_args"]["name"] == "tiny-beit3-sam1"
    checkpoint = run / "checkpoints" / "last.ckpt"
    metrics = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint), "--run_dir", "null",
                 "--metrics_file", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["test"] and "test: cIoU=" in capsys.readouterr().out
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    rebuilt = evf.load(checkpoint).model.state_dict()
    assert trained and all(torch.equal(rebuilt[k.removeprefix("model.")], v) for k, v in trained.items())


# -- release folders -------------------------------------------------------------------------------
def test_a_release_folder_loads_into_its_preset_and_another_family_is_refused(tmp_path):
    folder = write_release_folder(tmp_path / "evf-sam-tiny")  # EvfSamModel, sam_scale tiny, BEiT-3 tiny
    loaded, reference = evf.create_model("tiny-beit3-sam1", checkpoint=str(folder)), EVFSAM.from_pretrained(folder)
    assert loaded.encoder.tokenizer_path == str(folder)  # the folder's own tokenizer files
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    assert torch.equal(loaded.predict(image, ["a dog"]), reference.predict(image, ["a dog"]))

    refusals = {
        "tiny-beit3-sam2": "holds EvfSamModel (sam_scale tiny, BEiT-3 tiny), but preset tiny-beit3-sam2 is EvfSam2Model "
                           "(sam_scale toy, BEiT-3 tiny)",
        "evf-sam-beit3l-samh": "but preset evf-sam-beit3l-samh is EvfSamModel (sam_scale huge, BEiT-3 large)",
        "tiny-beit3-sam1": "preset tiny-beit3-sam1, as configured, cannot hold an official release: official releases "
                           "hold a BEiT-3 encoder in early-fusion mode",  # with the late-fusion override below
    }
    for name, message in refusals.items():
        with pytest.raises(CheckpointError) as caught:
            evf.create_model(name, checkpoint=str(folder), encoder={"mode": "late"} if name == "tiny-beit3-sam1" else None)
        assert message in str(caught.value) and str(folder) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="not both"):
        evf.create_model("tiny-beit3-sam1", checkpoint=str(folder), sam={"checkpoint": "sam.pth"})


def test_sam2_versions_are_told_apart_by_the_weights(tmp_path):
    torch.manual_seed(0)
    folder = EVFSAM(Beit3Encoder(size="tiny"), Sam2Backend(variant="toy", version="2.1")).save_pretrained(tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"holds SAM-2\.1 weights, but preset tiny-beit3-sam2 builds SAM-2\.0$"):
        evf.create_model("tiny-beit3-sam2", checkpoint=str(folder))
    assert evf.create_model("tiny-beit3-sam2", checkpoint=str(folder), sam={"version": "2.1"}).sam.name == "sam2.1_toy"


# -- discovery -----------------------------------------------------------------------------------
def test_a_plugin_registered_with_one_line_is_discovered(monkeypatch, rgb_image):
    """One registration line (the decorator) puts a plugin into the contract tests' parametrisation and the presets."""
    from tests import contracts

    monkeypatch.setattr(ENCODERS, "entries", dict(ENCODERS.entries))  # restored after the test
    monkeypatch.setattr(SAM_BACKENDS, "entries", dict(SAM_BACKENDS.entries))

    @ENCODERS.register("beit3copy", tiny={"size": "tiny", "depth": 1})
    class Beit3Copy(Beit3Encoder):
        pass

    @SAM_BACKENDS.register("sam1copy", tiny={"variant": "tiny"})
    class Sam1Copy(Sam1Backend):
        pass

    assert {"tiny-beit3copy-sam1", "tiny-beit3-sam1copy"} <= set(evf.list_models("tiny-*"))
    assert {c.values[0] for c in contracts.cases()} >= {"beit3copy"}
    contracts.check_encoder_gradients("beit3copy", "early", "image_cls")
    contracts.check_backend_contract("sam1copy", rgb_image)
    contracts.check_trainable_gradients("tiny-beit3-sam1copy")
    assert type(evf.create_model("tiny-beit3copy-sam1").encoder) is Beit3Copy
