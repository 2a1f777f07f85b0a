"""Learning-rate schedules shared by training (``EVFSAMModule``) and the studies' own training loops."""
from __future__ import annotations

from collections.abc import Callable


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor per optimizer step for ``LambdaLR``: linear warm-up to 1 over ``warmup`` steps, then linear decay
    to 0 at ``total``.

    Not ``transformers.get_linear_schedule_with_warmup``: that one starts at factor 0 (a first step that changes
    nothing), this one at ``1 / warmup``; without warm-up the two agree exactly.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    return factor
