"""The fusion-study rows (experiments/mini*/): each resolves to the encoder and mode its name says, the
pre-trained rows to `python -m studies.fusion.pretrain`'s weights, the random-init rows to none."""
from __future__ import annotations

from pathlib import Path

import pytest

from studies.fusion.pretrain import OUTPUTS
from tests.config_resolver import ConfigResolver

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
NAMES = sorted(p.stem for p in (EXPERIMENTS / "mini").glob("*.yaml"))
CLASSES = {"beit3": "Beit3Encoder", "clip": "ClipEncoder", "vilt": "ViltEncoder"}
WEIGHT_ARG = {"beit3": "checkpoint", "clip": "checkpoint", "vilt": "pretrained"}


@pytest.fixture(scope="module")
def resolve():
    return ConfigResolver([EXPERIMENTS / "mini_base.yaml", EXPERIMENTS / "mini" / f"{NAMES[0]}.yaml"])


def test_both_studies_have_the_same_nine_rows():
    assert NAMES == sorted(p.stem for p in (EXPERIMENTS / "mini_scratch").glob("*.yaml"))
    assert NAMES == ["beit3_early_l1", "beit3_early_l1-2", "beit3_late", "beit3_text", "clip_late", "clip_text",
                     "vilt_early", "vilt_late", "vilt_text"]


@pytest.mark.parametrize("name", NAMES)
def test_row_resolves_to_its_encoder_mode_and_weights(name, resolve):
    family, mode = name.split("_")[:2]
    pretrained = resolve(EXPERIMENTS / "mini_base.yaml", EXPERIMENTS / "mini" / f"{name}.yaml")["model"]["model"]["init_args"]
    scratch = resolve(EXPERIMENTS / "mini_base.yaml", EXPERIMENTS / "mini_scratch_base.yaml",
                      EXPERIMENTS / "mini_scratch" / f"{name}.yaml")["model"]["model"]["init_args"]
    for config in (pretrained, scratch):
        assert config["encoder"]["class_path"] == f"evf.encoders.{CLASSES[family]}"
        assert config["encoder"]["init_args"]["mode"] == mode
        if family == "beit3":
            assert config["encoder"]["init_args"]["depth"] == (1 if name == "beit3_early_l1" else None)
    assert pretrained["encoder"]["init_args"][WEIGHT_ARG[family]] == f"weights/mini/{OUTPUTS[family]}"
    assert pretrained["sam"]["init_args"]["checkpoint"] == f"weights/mini/{OUTPUTS['sam']}"
    assert scratch["encoder"]["init_args"][WEIGHT_ARG[family]] is None
    assert scratch["sam"]["init_args"]["checkpoint"] is None
