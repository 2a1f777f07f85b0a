"""The sectioned benchmarks (``python -m benchmarks.<section>``, ``benchmarks.run``): the explicit attention
reference matches the model, and the reports have their rows and columns."""
from __future__ import annotations

import re

import pytest
import torch

from benchmarks import attention_sdpa, prompt_batching, run, train_step_cache
from benchmarks.attention_sdpa import explicit_attention

TINY = ["--tiny", "--in-process", "--threads", "1"]


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


def check_train(text: str) -> None:
    assert "(a) training step" in text
    assert re.search(r"configuration\s+s/step\s+speed-up\s+peak RSS MiB\s+\+MiB", text)
    assert re.search(r"without cache \(SAM encoder runs\)\s+[\d.]+\s+1\.0x\s+\d+\s+[+-]\d+", text)
    assert re.search(r"with cache \(evf.cache\)\s+[\d.]+\s+[\d.]+x\s+\d+\s+[+-]\d+", text)


def check_prompts(text: str, counts: list[int]) -> None:
    assert "(b) N prompts on one image" in text
    assert re.search(r"N\s+batched s\s+one-per-prompt s\s+speed-up\s+peak MiB batch\s+peak MiB loop", text)
    rows = re.findall(r"^(\d+)\s+[\d.]+\s+[\d.]+\*?\s+[\d.]+x\s+\d+\s+\d+$", text, flags=re.MULTILINE)
    assert [int(n) for n in rows] == counts


def check_attention(text: str) -> None:
    assert "(c) BEiT-3 attention block" in text
    diff = re.search(r"explicit softmax\(QK\^T/sqrt\(d\)\)V\s+[\d.]+\s+[\d.]+x\s+\d+\s+([\d.e+-]+)$", text, flags=re.MULTILINE)
    assert diff and float(diff.group(1)) <= 1e-5


def test_run_tiny_in_process_report(capsys):
    assert run.main([*TINY, "--prompts", "1,2", "--steps", "1", "--repeats", "3"]) == 0
    text = capsys.readouterr().out
    check_train(text)
    check_prompts(text, [1, 2])
    check_attention(text)


def test_each_section_runs_alone(capsys):
    assert attention_sdpa.main([*TINY, "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    check_attention(text)
    assert "(a) training step" not in text and "(b) N prompts" not in text
    assert prompt_batching.main([*TINY, "--prompts", "3", "--loop-calls", "1"]) == 0
    text = capsys.readouterr().out
    check_prompts(text, [3])
    assert "* N x mean of 1 timed one-prompt calls" in text  # 3 prompts estimated from 1 timed call
    assert train_step_cache.main([*TINY, "--steps", "1"]) == 0
    check_train(capsys.readouterr().out)


def test_bad_options_are_one_line_errors(capsys):
    for main, argv, message in ((run.main, ["--only", "nothing"], "unknown section"),
                                (prompt_batching.main, ["--prompts", "0,2"], "positive counts"),
                                (run.main, ["--prompts", "x"], "comma list of counts")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_run_tiny_subprocesses(capsys):
    assert run.main(["--tiny", "--prompts", "1,4", "--repeats", "3"]) == 0
    text = capsys.readouterr().out
    check_train(text)
    check_prompts(text, [1, 4])
    check_attention(text)
