"""Two-"node" runs on one machine (torchrun, static rendezvous on loopback, gloo) and what they are compared with.

Also the CPU stand-ins for the FSDP and DeepSpeed strategies. Lightning refuses both without CUDA (guards, not
missing features): the subclasses below step past exactly those guards and change nothing else, so the
strategies' own sharding, gradient reduction and checkpoint code runs over gloo on CPU.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

from tests.training_helpers import REPO, run_evf, subprocess_env

DEEPSPEED_CPU_ENV = {"DS_ACCELERATOR": "cpu"}  # DeepSpeed's own CPU accelerator (gloo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(*evf_args, env: dict[str, str] | None = None, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 --nproc-per-node 1 ... -m evf.cli <evf_args>`` for node ranks 0 and 1 at once."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "static", "--master-addr", "127.0.0.1", "--master-port", str(port), "--node-rank", str(rank),
         "-m", "evf.cli", *map(str, evf_args)],
        cwd=REPO, env=subprocess_env() | (env or {}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"node {rank} failed:\n{result.stdout[-4000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in results[1].stdout  # both processes joined one process group
    return results


def two_node_fit_args(config: Path, run: Path, *extra) -> list:
    return ["fit", "--config", config, *extra, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.num_nodes", "2", "--run_dir", run]


def one_process_metrics(config: Path, checkpoint: str | Path, out: Path) -> dict:
    """``evf test`` of ``checkpoint`` on one process, whatever strategy and node count ``config`` records."""
    run_evf("test", "--config", config, "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
            "--run_dir", "null", "--save_predictions", "false", "--metrics_file", out, "--ckpt_path", checkpoint)
    return json.loads(out.read_text())["test"]


def one_process_batch4_weights(config: Path, run: Path) -> dict[str, torch.Tensor]:
    """The trainable weights after training ``config`` on one process with batch 4 (= 2 nodes x batch 2)."""
    from evf.cli import main as evf_main

    assert evf_main(["fit", "--config", str(config), "--data.init_args.batch_size", "4", "--run_dir", str(run)]) == 0
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_training(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Equal up to float summation order (the gradient is averaged over nodes instead of summed in one batch)."""
    assert weights.keys() == reference.keys() and "model.projector.0.weight" in weights
    for key, value in reference.items():
        # A key projection's bias moves every attention logit of a query equally (softmax ignores it): its true
        # gradient is 0, and what Adam makes of the rounding noise depends on the summation order.
        if not key.endswith("k_proj.bias"):
            torch.testing.assert_close(weights[key].float(), value, rtol=1e-4, atol=1e-5, msg=key)


class CpuFSDPStrategy(FSDPStrategy):
    """Lightning's accelerator connector refuses ``FSDPStrategy`` itself on CPU ("requires a GPU accelerator"; it
    tests ``type(...) is FSDPStrategy``), and torch's FSDP refuses CPU modules unless given ``device_id``
    ("FSDP needs a non-CPU accelerator device"), which Lightning passes as ``None`` on CPU."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)


class CpuDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` raises "only supported on CUDA GPUs" for a CPU accelerator, then checks
    CUDA device indices, and hands DeepSpeed ``device_rank=None``; DeepSpeed itself runs on CPU (``DS_ACCELERATOR=cpu``)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips only the CUDA check

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)  # DeepSpeed's engine compares the device index with 0
