"""The one evaluator against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from evf.metrics import ReferringSegmentationMetrics, per_sample
from evf.optim import linear_schedule


def mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


# sample 1: I=1, U=3 -> IoU 1/3; sample 2 (another size): I=4, U=4 -> IoU 1
PREDS = [mask(["#..", "..#"]), mask(["##", "##"])]
TARGETS = [mask(["##.", "..."]), mask(["##", "##"])]


def computed(preds, targets, chunks=1) -> dict[str, float]:
    metric = ReferringSegmentationMetrics()
    step = max(1, math.ceil(len(preds) / chunks))
    for i in range(0, len(preds), step):
        metric.update(preds[i:i + step], targets[i:i + step])
    return as_floats(metric)


def as_floats(metric: ReferringSegmentationMetrics) -> dict[str, float | None]:
    return {k: None if math.isnan(float(v)) else float(v) for k, v in metric.compute().items()}


def test_hand_computed_values():
    m = computed(PREDS, TARGETS)
    assert m["cIoU"] == pytest.approx(5 / 7)
    assert m["gIoU"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["P@0.5"] == m["P@0.9"] == 0.5
    assert m["samples"] == 2
    assert m["no_target_acc"] is None  # no no-target samples in the split


def test_per_sample_rows():
    rows = per_sample(PREDS, TARGETS)
    assert rows.dtype == torch.float64
    assert rows.tolist() == [[1.0, 3.0, 1 / 3], [4.0, 4.0, 1.0]]


def test_empty_masks_and_no_target_accuracy():
    empty = mask(["..", ".."])
    preds = [empty, mask(["#.", ".."]), PREDS[0]]
    targets = [empty, empty, TARGETS[0]]  # both empty -> IoU 1; false positive on no-target -> IoU 0
    m = computed(preds, targets)
    assert m["gIoU"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert m["cIoU"] == pytest.approx((0 + 0 + 1) / (0 + 1 + 3))
    assert m["no_target_acc"] == 0.5
    assert m["P@0.5"] == pytest.approx(1 / 3)


def test_all_empty_split():
    empty = mask(["...", "..."])
    m = computed([empty] * 3, [empty] * 3)
    assert m["cIoU"] == 1.0 and m["gIoU"] == 1.0 and m["P@0.9"] == 1.0
    assert m["no_target_acc"] == 1.0 and m["samples"] == 3


def test_nothing_counted():
    m = computed([], [])
    assert m["samples"] == 0 and m["gIoU"] == 0.0


def test_chunking_and_process_merge_give_identical_values():
    generator = torch.Generator().manual_seed(0)
    preds = [torch.rand(5, 7, generator=generator) > 0.5 for _ in range(11)]
    targets = [torch.rand(5, 7, generator=generator) > 0.6 for _ in range(11)]
    whole = computed(preds, targets)
    assert computed(preds, targets, chunks=4) == whole
    # two "processes" holding interleaved halves, merged the way a distributed sync reduces states
    ranks = [ReferringSegmentationMetrics(), ReferringSegmentationMetrics()]
    for k, (p, t) in enumerate(zip(preds, targets)):
        ranks[k % 2].update([p], [t])
    ranks[0].merge_state(ranks[1])
    assert as_floats(ranks[0]) == whole


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        computed([mask(["#."])], [mask(["#", "."])])


def test_linear_schedule_with_warmup_per_optimizer_step():
    factor = linear_schedule(warmup=2, total=6)
    assert [factor(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert linear_schedule(0, 4)(0) == 1.0
