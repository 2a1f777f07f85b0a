"""``evf bench``: the explicit attention reference matches the model, and the report has its rows and columns."""
from __future__ import annotations

import re

import pytest
import torch

from evf.cli import main as evf
from evf.commands.bench import explicit_attention


def test_explicit_reference_equals_sdpa_attention():
    from evf.encoders.beit3_model import MultiwaySelfAttention, beit3_config

    cfg = beit3_config("tiny")
    torch.manual_seed(0)
    module = MultiwaySelfAttention(cfg).eval()
    n_img = cfg.num_image_tokens
    x = torch.randn(3, n_img + 7, cfg.dim)
    padding = torch.zeros(3, n_img + 7, dtype=torch.bool)
    padding[1, -3:] = True
    with torch.no_grad():
        sdpa, ref = module(x, n_img, padding), explicit_attention(module, x, n_img, padding)
    assert sdpa.shape == ref.shape == x.shape
    assert (sdpa - ref).abs().max().item() <= 1e-5
    # the padded keys really are ignored: changing them leaves the other rows' outputs unchanged
    x2 = x.clone()
    x2[1, -3:] += 5.0
    with torch.no_grad():
        assert torch.allclose(module(x2, n_img, padding)[1, :-3], sdpa[1, :-3], atol=1e-5)


def check_report(text: str, counts: list[int]) -> None:
    for header in ("(a) training step", "(b) N prompts on one image", "(c) BEiT-3 attention block"):
        assert header in text
    assert re.search(r"configuration\s+s/step\s+speed-up\s+peak RSS MiB\s+\+MiB", text)
    assert re.search(r"without cache \(SAM encoder runs\)\s+[\d.]+\s+1\.0x\s+\d+\s+[+-]\d+", text)
    assert re.search(r"with cache \(evf.cache\)\s+[\d.]+\s+[\d.]+x\s+\d+\s+[+-]\d+", text)
    assert re.search(r"N\s+batched s\s+one-per-prompt s\s+speed-up\s+peak MiB batch\s+peak MiB loop", text)
    rows = re.findall(r"^(\d+)\s+[\d.]+\s+[\d.]+\*?\s+[\d.]+x\s+\d+\s+\d+$", text, flags=re.MULTILINE)
    assert [int(n) for n in rows] == counts
    diff = re.search(r"explicit softmax\(QK\^T/sqrt\(d\)\)V\s+[\d.]+\s+[\d.]+x\s+\d+\s+([\d.e+-]+)$", text, flags=re.MULTILINE)
    assert diff and float(diff.group(1)) <= 1e-5


def test_bench_tiny_in_process_report(capsys):
    assert evf(["bench", "--tiny", "--in-process", "--prompts", "1,2", "--steps", "1", "--threads", "1"]) == 0
    check_report(capsys.readouterr().out, [1, 2])


def test_bench_rejects_bad_options(capsys):
    assert evf(["bench", "--only", "nothing"]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert evf(["bench", "--prompts", "0,2"]) == 2
    assert "positive counts" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_tiny_subprocesses(capsys):
    assert evf(["bench", "--tiny", "--prompts", "1,4"]) == 0
    check_report(capsys.readouterr().out, [1, 4])
