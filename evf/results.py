"""Results tables from finished runs: rows = configs, columns = dataset/split, mean ± std over seeds.

A finished run is a folder holding ``metrics.json`` (written atomically by ``evf fit --run_dir``):
``{"test": {"<dataset>/<split>": {"cIoU": ..., "gIoU": ...}}, "seed": S}``. ``evf sweep`` also leaves
``run.json`` (``{"name": <row label>, "seed": S, ...}``) beside it and ``sweep.json`` (row order) in
the results folder. Values are shown in percent, like the paper's tables.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from evf.errors import UserError, first_line
from evf.io import write_text_atomic

METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
SWEEP_FILE = "sweep.json"
AVERAGE_COLUMN = "avg"
# The scores evf.metrics computes per test set (a test keeps the two in step; importing it here would
# import torch into `evf table`). "samples" is recorded too, but is a count, not a score.
METRICS = ("cIoU", "gIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "no_target_acc", "N_acc", "T_acc")


class ResultsError(UserError, ValueError):
    """A results folder or one of its files (metrics.json, run.json, sweep.json) that cannot be read; names it."""


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ResultsError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return metric


@dataclass
class Run:
    name: str
    seed: int | None
    test: dict[str, dict[str, float | None]]
    folder: Path


@dataclass
class Table:
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # per-seed values, in percent

    def stats(self, row: str, column: str) -> tuple[float, float, int] | None:
        values = self.cells.get((row, column))
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def read_json(path: Path, layout: str = "") -> dict:
    """A JSON object from ``path``; with ``layout`` (``"test"`` for metrics.json) the named entry must be an object
    of objects ({"<dataset>/<split>": {"cIoU": ...}})."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ResultsError(f"cannot read {path}: {first_line(exc, 200)}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    entry = data.get(layout) if layout else None
    if layout and entry is not None and not (isinstance(entry, dict) and all(isinstance(v, dict) for v in entry.values())):
        raise ResultsError(f'{path}: "{layout}" must map each test set to its scores, e.g. {{"refcoco/val": {{"cIoU": 0.7}}}}')
    return data


def load_runs(root: str | Path) -> list[Run]:
    """Every finished run under ``root``; the row label comes from ``run.json`` or the folder layout
    ``<name>/seed<S>/metrics.json``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such results folder: {root}")
    runs = []
    for metrics_file in sorted(root.rglob(METRICS_FILE)):
        folder = metrics_file.parent
        metrics = read_json(metrics_file, layout="test")
        info = read_json(folder / RUN_FILE) if (folder / RUN_FILE).is_file() else {}
        default_name = folder.parent if folder.name.startswith("seed") else folder
        name = info.get("name") or default_name.relative_to(root).as_posix().removeprefix("runs/") or folder.name
        if not isinstance(name, str):
            raise ResultsError(f'{folder / RUN_FILE}: "name" must be a string, got {name!r}')
        test = metrics.get("test") or {}
        for column, scores in test.items():
            for key, value in scores.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ResultsError(f'{metrics_file}: {column} {key} is {value!r}, not a number')
        runs.append(Run(name, info.get("seed", metrics.get("seed")), test, folder))
    return runs


def row_order(root: Path, runs: list[Run]) -> list[str]:
    planned = read_json(root / SWEEP_FILE).get("configs", []) if (root / SWEEP_FILE).is_file() else []
    if not isinstance(planned, list) or not all(isinstance(n, str) for n in planned):
        raise ResultsError(f'{root / SWEEP_FILE}: "configs" must be a list of row names')
    names = {r.name for r in runs}
    return [n for n in planned if n in names] + sorted(names - set(planned))


def build_table(runs: list[Run], metric: str = "cIoU", rows: list[str] | None = None) -> Table:
    columns: list[str] = []
    for run in runs:
        columns += [c for c in run.test if c not in columns]
    table = Table(metric, rows or sorted({r.name for r in runs}), columns)
    for run in runs:
        values = {c: m.get(metric) for c, m in run.test.items()}
        for column, value in values.items():
            if value is not None:
                table.cells.setdefault((run.name, column), []).append(100.0 * float(value))
        if len(columns) > 1 and all(values.get(c) is not None for c in columns):
            average = 100.0 * statistics.fmean(float(values[c]) for c in columns)
            table.cells.setdefault((run.name, AVERAGE_COLUMN), []).append(average)
    if len(columns) > 1:
        table.columns.append(AVERAGE_COLUMN)
    return table


def format_cell(stats: tuple[float, float, int] | None, digits: int = 1) -> str:
    if stats is None:
        return "–"
    mean, std, n = stats
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(table: Table) -> str:
    header = ["config", *table.columns, "seeds"]
    lines = [f"{table.metric} (%), mean ± std over seeds", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":-:"] * (len(header) - 1)) + "|"]
    for row in table.rows:
        seeds = max((len(table.cells.get((row, c), [])) for c in table.columns), default=0)
        cells = [format_cell(table.stats(row, c)) for c in table.columns]
        lines.append("| " + " | ".join([row, *cells, str(seeds)]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One row per config; ``<column>`` (mean), ``<column> std`` and ``<column> n`` per column, in percent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["config"] + [f"{c}{suffix}" for c in table.columns for suffix in ("", " std", " n")])
    for row in table.rows:
        cells = []
        for column in table.columns:
            stats = table.stats(row, column)
            cells += ["", "", 0] if stats is None else [f"{stats[0]:.4f}", f"{stats[1]:.4f}", stats[2]]
        writer.writerow([row, *cells])
    return buffer.getvalue()


def write_tables(root: str | Path, out: str | Path | None = None, metric: str = "cIoU") -> tuple[Path, Path, Table]:
    """Rebuild ``results.md`` and ``results.csv`` (``results_<metric>.*`` for other metrics) atomically
    in ``out`` (default: ``root``)."""
    root = Path(root)
    check_metric(metric)
    runs = load_runs(root)
    if not runs:
        raise ResultsError(f"no finished runs ({METRICS_FILE}) under {root}")
    table = build_table(runs, metric, row_order(root, runs))
    out = Path(out or root)
    stem = "results" if metric == "cIoU" else f"results_{metric}"
    md, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    write_text_atomic(md, to_markdown(table))
    write_text_atomic(csv_path, to_csv(table))
    return md, csv_path, table
