"""(c) BEiT-3 attention: the model's SDPA vs an explicit softmax(QK^T/sqrt(d))V reference.

    OMP_NUM_THREADS=2 python -m benchmarks.attention_sdpa                 # BEiT-3-Base sizes
    OMP_NUM_THREADS=2 python -m benchmarks.attention_sdpa --encoder large

One multiway self-attention block as the model runs it vs the same block written out, 8 prompts, half of them
padded: the max |difference| of the outputs and the median time of ``--repeats`` calls. The explicit reference
lives only here (and in its test), never in the model.
"""
from __future__ import annotations

import statistics
import sys

import torch

from benchmarks import common

NAME = "attention"


def explicit_attention(module, x: torch.Tensor, split: int, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``MultiwaySelfAttention.forward`` with softmax(QK^T/sqrt(d))V written out."""
    q, k = module.query_key(x, split)
    v = module.split_heads(module.v_proj(x, split))
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
    return module.out_proj(module.inner_attn_ln(out, split), split)


def case_attention(c: dict) -> dict:
    from evf.encoders.beit3_model import MultiwaySelfAttention, beit3_config

    cfg = beit3_config(c["encoder"])
    torch.manual_seed(0)
    module = MultiwaySelfAttention(cfg).eval()
    n_img, n_txt, batch = cfg.num_image_tokens, 24, 8
    x = torch.randn(batch, n_img + n_txt, cfg.dim)
    padding = torch.zeros(batch, n_img + n_txt, dtype=torch.bool)
    padding[batch // 2:, n_img + n_txt // 2:] = True  # half the prompts are padded
    with torch.no_grad():
        diff = (module(x, n_img, padding) - explicit_attention(module, x, n_img, padding)).abs().max().item()
        fn = (lambda: module(x, n_img, padding)) if c["mode"] == "sdpa" else (lambda: explicit_attention(module, x, n_img, padding))
        fn()
        base = common.rss_mib()
        times = [common.timed(fn) for _ in range(c["repeats"])]
    return {"seconds": statistics.median(times), "max_abs_diff": diff, "base_mib": base,
            "shape": f"B={batch} N={n_img + n_txt} D={cfg.dim} H={cfg.heads}"}


CASES = {"attention": case_attention}


def add_arguments(p) -> None:
    p.add_argument("--repeats", type=int, default=20, help="timed calls per implementation")


def check(args, p) -> None:
    if args.repeats < 1:
        p.error(f"--repeats must be positive, got {args.repeats}")


def report(args, run) -> list[str]:
    widths = (36, 10, 9, 14, 14)
    sdpa = run({"kind": "attention", "mode": "sdpa", "repeats": args.repeats})
    ref = run({"kind": "attention", "mode": "explicit", "repeats": args.repeats})
    return [f"(c) BEiT-3 attention block ({sdpa['shape']}), median of {args.repeats}",
            common.row(("implementation", "ms", "ratio", "peak RSS MiB", "max |diff|"), widths),
            common.row(("SDPA (the model)", f"{sdpa['seconds'] * 1e3:.2f}", "1.00x", common.memory(sdpa)[0], "-"), widths),
            common.row(("explicit softmax(QK^T/sqrt(d))V", f"{ref['seconds'] * 1e3:.2f}",
                        f"{ref['seconds'] / sdpa['seconds']:.2f}x", common.memory(ref)[0], f"{ref['max_abs_diff']:.1e}"), widths)]


def main(argv=None) -> int:
    return common.main([sys.modules[__name__]], argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
