"""Mean ± std over seeds of the gRES comparison in docs/results.md, from the runs' metrics files.

    python -m studies.gres.summarize RUNS    # RUNS/{head,nohead}/seed*/metrics.json, RUNS/head-seed*-threshold0.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("N_acc", "T_acc", "balanced", "gIoU", "cIoU")


def scores(path: Path) -> dict[str, float]:
    (metrics,) = json.loads(path.read_text())["test"].values()
    return {**metrics, "balanced": (metrics["N_acc"] + metrics["T_acc"]) / 2}


def row(name: str, files: list[Path]) -> str:
    runs = [scores(f) for f in files]
    cells = []
    for key in METRICS:
        values = [r[key] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
    return f"| {name} ({len(runs)} seeds) | " + " | ".join(cells) + " |"


def main(root: str) -> None:
    runs = Path(root)
    print("| model | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    print(row("with presence head (threshold 0.5)", sorted(runs.glob("head/seed*/metrics.json"))))
    print(row("same weights, head ignored (threshold 0)", sorted(runs.glob("head-seed*-threshold0.json"))))
    print(row("trained without the head", sorted(runs.glob("nohead/seed*/metrics.json"))))
    for variant in ("head", "nohead"):
        for f in sorted(runs.glob(f"{variant}/seed*/metrics.json")):
            s = scores(f)
            print(f"{variant} {f.parent.name}: " + ", ".join(f"{k}={s[k]:.4f}" for k in METRICS))


if __name__ == "__main__":
    main(sys.argv[1])
