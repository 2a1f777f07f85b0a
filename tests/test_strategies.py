"""Strategy overrides, paper recipes and the SLURM launcher, checked without a GPU or a cluster."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import torch
import yaml

from evf.cli import main as evf_main
from tests.multinode import (
    DEEPSPEED_CPU_ENV,
    assert_same_training,
    one_process_batch4_weights,
    one_process_metrics,
    torchrun_two_nodes,
    two_node_fit_args,
)
from tests.training_helpers import REPO, write_config

STRATEGIES = REPO / "experiments" / "strategies"


def print_config(capsys, *configs) -> dict:
    argv = ["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"]
    assert evf_main(argv) == 0
    out = capsys.readouterr().out
    return yaml.safe_load("\n".join(line for line in out.splitlines() if not re.match(r"\[\d{4}-", line)))  # DeepSpeed log lines


def build_strategy(spec: dict):
    from lightning.pytorch.cli import instantiate_class

    strategy = instantiate_class((), {"class_path": spec["class_path"], "init_args": {**spec.get("init_args", {}),
                                                                                   **spec.get("dict_kwargs", {})}})
    return strategy


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_stage_2"])
def test_strategy_override_prints_and_instantiates(name, tmp_path, capsys):
    config = print_config(capsys, write_config(tmp_path / "tiny.yaml"), STRATEGIES / f"{name}.yaml")
    spec = config["trainer"]["strategy"]
    strategy = build_strategy(spec)
    if name == "ddp":
        assert type(strategy).__name__ == "DDPStrategy" and strategy._ddp_kwargs["find_unused_parameters"] is False
    elif name == "fsdp":
        from torch.distributed.fsdp import ShardingStrategy

        assert type(strategy).__name__ == "FSDPStrategy"
        assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
        assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"
    else:
        assert type(strategy).__name__ == "DeepSpeedStrategy"
        assert strategy.config["zero_optimization"]["stage"] == 2
        assert strategy.exclude_frozen_parameters is True


@pytest.mark.parametrize("name", ["refcoco", "hybrid"])
def test_paper_recipes(name, capsys):
    config = print_config(capsys, REPO / "experiments/base.yaml", REPO / "experiments/paper" / f"{name}.yaml",
                          REPO / "experiments/eval/refcoco.yaml")
    trainer, data = config["trainer"], config["data"]["init_args"]
    assert (trainer["devices"], trainer["accumulate_grad_batches"], trainer["max_steps"]) == (4, 2, 15000)
    assert data["batch_size"] == 16 and trainer["precision"] in ("bf16-mixed", "16-mixed")
    assert config["model"]["lr"] == 1e-4
    network = config["model"]["model"]["init_args"]
    assert network["bce_weight"] == network["dice_weight"] == 1.0 and network["sam"]["init_args"]["variant"] == "vit_h"
    assert build_strategy(trainer["strategy"]).config["zero_optimization"]["stage"] == 2
    assert [t["name"] for t in config["test_sets"]] == ["refcoco/val", "refcoco/testA", "refcoco/testB", "refcoco+/val",
                                                       "refcoco+/testA", "refcoco+/testB", "refcocog/val", "refcocog/test"]


def test_slurm_script_syntax_and_render_for_two_nodes(tmp_path):
    script = REPO / "scripts" / "slurm_fit.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert "#SBATCH --ntasks-per-node=4" in script.read_text()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text('#!/bin/bash\necho "SRUN $*"\n')
    (fake_bin / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", SLURM_NNODES="2",
               SLURM_NTASKS_PER_NODE="4(x2)", EVF="python -m evf.cli")
    result = subprocess.run(["bash", str(script), "--config", "experiments/paper/refcoco.yaml", "--run_dir", "runs/x"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    srun = [line for line in result.stdout.splitlines() if line.startswith("SRUN")]
    expected = ("SRUN python -m evf.cli fit --config experiments/paper/refcoco.yaml --run_dir runs/x "
                "--trainer.accelerator gpu --trainer.num_nodes 2 --trainer.devices 4")
    assert srun == [expected]


# Lightning runs neither FSDP nor DeepSpeed on CPU: the tests.multinode stand-ins step past its GPU-only guards.
CPU_STAND_INS = {"fsdp": ("tests.multinode.CpuFSDPStrategy", {}),
                 "deepspeed_stage_2": ("tests.multinode.CpuDeepSpeedStrategy", DEEPSPEED_CPU_ENV)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CPU_STAND_INS))
def test_two_nodes_with_sharded_strategies(name, tmp_path):
    """The strategy files on two torchrun nodes (gloo): both finish, training equals one process with the global
    batch, and a 1-process evaluation of the checkpoint equals the 2-node one."""
    class_path, env = CPU_STAND_INS[name]
    config = write_config(tmp_path / "tiny.yaml", max_steps=3, test_size=5)
    run = tmp_path / name
    strategy = ["--config", STRATEGIES / f"{name}.yaml", "--trainer.strategy.class_path", class_path]
    # FSDP: Lightning's trainer.test right after trainer.fit in one process fails (the module keeps FSDP's flat
    # parameter shards: Lightning issues #20373, #20950), so test in fresh processes, as `evf test` does.
    fsdp = name == "fsdp"
    torchrun_two_nodes(*two_node_fit_args(config, run, *strategy, "--test_after_fit", str(not fsdp).lower()), env=env)
    checkpoint, metrics = run / "checkpoints" / "last.ckpt", run / "metrics.json"
    if fsdp:
        metrics = tmp_path / "two-node-test.json"
        torchrun_two_nodes("test", "--config", run / "config.yaml", "--run_dir", "null", "--metrics_file", metrics,
                           "--ckpt_path", checkpoint, env=env)
        weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    else:  # DeepSpeed checkpoints are folders of shards; one file for the 1-process evaluation
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        assert checkpoint.is_dir()
        convert_zero_checkpoint_to_fp32_state_dict(checkpoint, tmp_path / "last.pt")
        checkpoint = tmp_path / "last.pt"
        weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    two = json.loads(metrics.read_text())["test"]
    assert two["synthetic/test"]["samples"] == 5
    assert one_process_metrics(run / "config.yaml", checkpoint, tmp_path / "single.json") == two
    assert_same_training(weights, one_process_batch4_weights(config, tmp_path / "one-process"))
