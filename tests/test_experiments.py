"""Every experiments/ablations/*.yaml, layered on experiments/base.yaml: parses with --print_config,
resolves to the paper row it names, and trains one step once its weights are swapped for tiny ones."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from evf.cli import main
from evf.registry import Registry, import_class
from tests.config_resolver import ConfigResolver

pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")]

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "base.yaml"
ROWS = sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))
ROW_IDS = [p.stem for p in ROWS]

# Encoder rows of the paper -> (encoder class, arguments the resolved config must hold).
CLIP_L_OPENAI = {"model": "ViT-L-14-quickgelu", "checkpoint": "weights/clip_vit_l14_openai.bin"}
CLIP_L_LAION = {"model": "ViT-L-14", "checkpoint": "weights/clip_vit_l14_laion2b.bin"}
CLIP_H_LAION = {"model": "ViT-H-14", "checkpoint": "weights/clip_vit_h14_laion2b.bin"}
VILT = {"pretrained": "weights/vilt-b32-mlm", "tokenizer": None}
BEIT3_L = {"size": "large", "feature": None, "depth": None}
ENCODER_ROWS = {
    "tab4_clip_l_openai_text": ("ClipEncoder", {**CLIP_L_OPENAI, "mode": "text"}),
    "tab4_clip_l_openai_late": ("ClipEncoder", {**CLIP_L_OPENAI, "mode": "late"}),
    "tab4_clip_l_laion2b_text": ("ClipEncoder", {**CLIP_L_LAION, "mode": "text"}),
    "tab4_clip_l_laion2b_late": ("ClipEncoder", {**CLIP_L_LAION, "mode": "late"}),
    "tab4_clip_h_laion2b_text": ("ClipEncoder", {**CLIP_H_LAION, "mode": "text"}),
    "tab4_clip_h_laion2b_late": ("ClipEncoder", {**CLIP_H_LAION, "mode": "late"}),
    "tab4_vilt_text": ("ViltEncoder", {**VILT, "mode": "text"}),
    "tab4_vilt_late": ("ViltEncoder", {**VILT, "mode": "late"}),
    "tab4_vilt_early": ("ViltEncoder", {**VILT, "mode": "early"}),
    "tab4_beit3_text": ("Beit3Encoder", {**BEIT3_L, "mode": "text"}),
    "tab4_beit3_late": ("Beit3Encoder", {**BEIT3_L, "mode": "late"}),
    "tab4_beit3_early_l1-12": ("Beit3Encoder", {**BEIT3_L, "mode": "early", "depth": 12}),
    "tab4_beit3_early_l1-24": ("Beit3Encoder", {**BEIT3_L, "mode": "early"}),
    "tab5_clip_l_sam_h": ("ClipEncoder", {**CLIP_L_OPENAI, "mode": "text"}),
    "tab5_vilt_sam_h": ("ViltEncoder", {**VILT, "mode": "early"}),
    "tab5_beit3_b_sam_h": ("Beit3Encoder", {"size": "base", "mode": "early", "checkpoint": "weights/beit3_base_itc_patch16_224.pth"}),
    "tab12_text_cls": ("Beit3Encoder", {**BEIT3_L, "mode": "early", "feature": "text_cls"}),
    "tab12_image_cls": ("Beit3Encoder", {**BEIT3_L, "mode": "early", "feature": "image_cls"}),
    "tab12_image_avg": ("Beit3Encoder", {**BEIT3_L, "mode": "early", "feature": "image_avg"}),
    "tab12_concat_cls": ("Beit3Encoder", {**BEIT3_L, "mode": "early", "feature": "concat_cls"}),
}
ENCODER_KEEP = ("mode", "feature", "depth")  # what a row means; everything else becomes the tiny variant


@pytest.fixture(scope="module")
def resolve():
    return ConfigResolver([BASE, ROWS[0]])


def test_shared_parser_resolves_like_print_config(resolve, capsys):
    """The rows below are resolved by one shared parser; it gives what ``evf fit --print_config`` prints."""
    row = ROOT / "experiments" / "ablations" / "tab5_beit3_l_sam2_l.yaml"
    capsys.readouterr()
    assert main(["fit", "--config", str(BASE), "--config", str(row), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    subcommand_only = {"ckpt_path", "weights_only"}  # arguments of Trainer.fit, not of the config
    assert {k: v for k, v in printed.items() if k not in subcommand_only} == resolve(BASE, row)
    assert printed["model"]["model"]["init_args"]["sam"]["class_path"] == "evf.sam.Sam2Backend"


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_a_command_builds_only_its_own_subcommand_parser(subcommand, fit_config):
    from lightning.pytorch.cli import LightningCLI

    from evf.lightning_cli import CLI_KWARGS
    from tests.config_resolver import ParsedCommand

    cli = ParsedCommand(**CLI_KWARGS, args=[subcommand, "--config", str(fit_config)], save_config_callback=None)
    assert list(cli._subcommand_parsers) == [subcommand] and cli.config.subcommand == subcommand
    cli = ParsedCommand(**CLI_KWARGS, args=["--config", str(fit_config)], run=False, save_config_callback=None)
    assert cli.subcommands() == LightningCLI.subcommands()  # no subcommand named: Lightning's full set


@pytest.mark.parametrize("saved_hparams", [False, True])
def test_lightning_reads_a_checkpoint_for_hyperparameters_only_if_it_has_some(saved_hparams, fit_config, tmp_path,
                                                                               monkeypatch):
    import torch
    from lightning.pytorch.cli import LightningCLI

    from evf.lightning_cli import CLI_KWARGS
    from tests.config_resolver import ParsedCommand

    ckpt = tmp_path / "some.ckpt"
    torch.save({"state_dict": {}, **({"hyper_parameters": {"lr": 0.5}} if saved_hparams else {})}, ckpt)
    calls = []
    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self: calls.append(self))
    ParsedCommand(**CLI_KWARGS, args=["test", "--config", str(fit_config), "--ckpt_path", str(ckpt)],
               save_config_callback=None)
    assert len(calls) == int(saved_hparams)


def test_interpolation_resolves_across_config_files(resolve, tmp_path):
    """``${...}`` in one --config file may name a value set by another (resolved once, after merging)."""
    row = tmp_path / "row.yaml"
    row.write_text("trainer:\n  max_steps: 123\nmodel:\n  warmup_steps: ${trainer.max_steps}\n")
    config = resolve(BASE, row)
    assert config["model"]["warmup_steps"] == 123 and config["trainer"]["max_steps"] == 123


def registry_entry(registry: Registry, cls: type):
    entries = [e for e in registry.entries.values() if e.cls is cls]
    assert entries, f"{cls.__name__} is not registered in {registry.slot!r}: no tiny variant to test the row with"
    return entries[0]


def tiny_encoder(spec: dict) -> dict:
    from evf.encoders import ENCODERS, Beit3Encoder
    from evf.encoders.beit3_model import beit3_config

    cls = import_class(spec["class_path"])
    args = {k: v for k, v in spec.get("init_args", {}).items() if k in ENCODER_KEEP and v is not None}
    tiny = registry_entry(ENCODERS, cls).tiny
    if cls is Beit3Encoder and "depth" in args:  # keep the fraction of layers run ("L1-L12" of 24 = half)
        full, small = beit3_config(spec["init_args"]["size"]).depth, beit3_config(tiny["size"]).depth
        args["depth"] = max(1, round(args["depth"] * small / full))
    return {"class_path": spec["class_path"], "init_args": {**args, **tiny}}


def tiny_sam(spec: dict) -> dict:
    from evf.sam import SAM_BACKENDS

    switches = {k: v for k, v in spec.get("init_args", {}).items() if isinstance(v, bool)}  # Tab.6 trainable flags
    return {"class_path": spec["class_path"], "init_args": {**switches, **registry_entry(SAM_BACKENDS, import_class(spec["class_path"])).tiny}}


def tiny_config(config: dict, root: Path) -> dict:
    from datamodules import DATAMODULES

    net = config["model"]["model"]["init_args"]
    net["encoder"] = tiny_encoder(net["encoder"])
    net["sam"] = tiny_sam(net["sam"])
    config["data"] = {"class_path": "datamodules.SyntheticRefDataModule",
                      "init_args": {**DATAMODULES.get("synthetic").tiny, "num_workers": 0}}
    config["trainer"].update(accelerator="cpu", devices=1, precision="32-true", fast_dev_run=1, logger=False,
                             callbacks=None, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(root))
    config["test_after_fit"] = False
    return config


def test_every_paper_row_has_its_file():
    assert TRAINED_BY_DEFAULT <= set(ROW_IDS)
    assert set(ENCODER_ROWS) <= set(ROW_IDS), f"missing: {sorted(set(ENCODER_ROWS) - set(ROW_IDS))}"
    assert sum(r.startswith("tab4_") for r in ENCODER_ROWS) == 13 and sum(r.startswith("tab12_") for r in ENCODER_ROWS) == 4


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_print_config_resolves_to_the_row(row, resolve):
    config = resolve(BASE, row)
    base = yaml.safe_load(BASE.read_text())
    override = yaml.safe_load(row.read_text()) or {}
    net = config["model"]["model"]["init_args"]
    for slot in ("encoder", "sam"):  # a row that swaps a plugin class must not inherit the old class's arguments
        net_override = (override.get("model") or {}).get("model") or {}
        given = net_override.get(slot) or (net_override.get("init_args") or {}).get(slot) or {}
        if given.get("class_path", base["model"]["model"][slot]["class_path"]) == base["model"]["model"][slot]["class_path"]:
            continue
        defaults = inspect.signature(import_class(given["class_path"]).__init__).parameters
        leaked = {k: v for k, v in net[slot]["init_args"].items()
                  if k not in (given.get("init_args") or {}) and v != defaults[k].default}
        assert not leaked, f"{row.name} inherits {leaked} from base.yaml's {slot}; spell them out in the row"
    if row.stem in ENCODER_ROWS:
        cls_name, expected = ENCODER_ROWS[row.stem]
        assert net["encoder"]["class_path"] == f"evf.encoders.{cls_name}"
        assert {k: net["encoder"]["init_args"].get(k) for k in expected} == expected


# One row per SAM backend (SAM-1 with a CLIP encoder, SAM-2 and EfficientSAM with BEiT-3) trains in the default
# suite; the other rows (the same YAML-to-Trainer path with other plugin arguments, each plugin's training step being
# covered by tests/test_trainable_contract.py) train in the slow one.
TRAINED_BY_DEFAULT = {"tab4_clip_l_openai_late", "tab5_beit3_l_sam2_l", "tab5_beit3_l_efficientsam_s"}


@pytest.mark.parametrize("row", [r if r.stem in TRAINED_BY_DEFAULT else pytest.param(r, marks=pytest.mark.slow) for r in ROWS],
                         ids=ROW_IDS)
def test_row_trains_one_step_with_tiny_weights(row, resolve, tmp_path):
    from evf.lightning_cli import run_lightning_cli

    config = tiny_config(resolve(BASE, row), tmp_path)
    tiny_file = tmp_path / "tiny.yaml"
    tiny_file.write_text(yaml.safe_dump(config))
    cli = run_lightning_cli(["fit", "--config", str(tiny_file)])
    assert cli.trainer.global_step == 1
    spec = config["model"]["model"]["init_args"]["encoder"]
    encoder = cli.model.model.encoder
    assert type(encoder) is import_class(spec["class_path"])
    for key, value in spec["init_args"].items():
        if key in ENCODER_KEEP:
            assert getattr(encoder, key) == value, key
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


def layered_bases(path: Path) -> list[Path]:
    """The files an experiment file is layered on, as its usage line and `evf sweep --base` state."""
    experiments = ROOT / "experiments"
    folder = path.parent.name
    if path.parent == experiments:
        return [experiments / "mini_base.yaml"] if path.name == "mini_scratch_base.yaml" else []
    if folder == "mini":
        return [experiments / "mini_base.yaml"]
    if folder == "mini_scratch":
        return [experiments / "mini_base.yaml", experiments / "mini_scratch_base.yaml"]
    return [BASE]


def merged(configs: list[dict]) -> dict:
    out: dict = {}
    for config in configs:
        out = merge_into(out, config)
    return out


def merge_into(base, override):
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return override  # another class: its arguments start afresh (LightningCLI carries same names over)
    return {**base, **{k: merge_into(base.get(k), v) for k, v in override.items()}}


def restated(base, override, key: str = "") -> list[str]:
    """Keys of ``override`` whose value ``base`` already sets to the same thing. A subtree that names another
    ``class_path`` is skipped: there, spelling arguments out is required (see the leak check above)."""
    if isinstance(base, dict) and isinstance(override, dict):
        if "class_path" in override and override["class_path"] != base.get("class_path"):
            return []
        return [r for k, v in override.items() if k in base for r in restated(base[k], v, f"{key}.{k}".lstrip("."))]
    return [key] if base == override else []


EXPERIMENT_FILES = sorted(p for p in (ROOT / "experiments").rglob("*.yaml") if layered_bases(p))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_experiment_files_state_only_what_differs_from_their_base(path):
    base = merged([yaml.safe_load(b.read_text()) or {} for b in layered_bases(path)])
    assert restated(base, yaml.safe_load(path.read_text()) or {}) == []


def test_restated_finds_repeated_values_but_not_new_classes():
    base = {"a": 1, "m": {"class_path": "X", "init_args": {"size": "l", "mode": "early"}}, "t": [1, 2]}
    assert restated(base, {"a": 1, "m": {"init_args": {"size": "l", "mode": "late"}}, "t": [1, 2]}) == ["a", "m.init_args.size", "t"]
    assert restated(base, {"a": 2, "m": {"class_path": "Y", "init_args": {"size": "l"}}, "t": [1]}) == []
