"""LightningCLI for ``evf fit|validate|test``: YAML in, every plugin chosen by ``class_path``."""
from __future__ import annotations

from typing import Sequence

import torch
from lightning.pytorch.cli import LightningCLI

from datamodules.base import RefSegDataModule
from evf.lightning import EVFSAMModule


def format_metrics(stage: str, metrics: dict) -> str:
    def get(name):
        value = metrics.get(f"{stage}/{name}")
        return float(value) if value is not None else float("nan")

    return (f"{stage}: cIoU={get('cIoU'):.4f} gIoU={get('gIoU'):.4f} "
            f"P@0.5={get('P@0.5'):.4f} samples={int(get('samples')) if get('samples') == get('samples') else 0}")


class EvfCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, evaluate the best (or last) checkpoint on the test split")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        callback = self.trainer.checkpoint_callback
        ckpt = "best" if callback is not None and getattr(callback, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        self.report("test")

    def after_validate(self) -> None:
        self.report("val")

    def after_test(self) -> None:
        self.report("test")

    def report(self, stage: str) -> None:
        if self.trainer.is_global_zero:
            print(format_metrics(stage, self.trainer.callback_metrics), flush=True)


def run_lightning_cli(argv: Sequence[str]) -> EvfCLI:
    torch.set_float32_matmul_precision("high")
    return EvfCLI(
        EVFSAMModule, RefSegDataModule, subclass_mode_data=True, args=list(argv),
        save_config_kwargs={"overwrite": True}, parser_kwargs={"parser_mode": "omegaconf"},
    )
