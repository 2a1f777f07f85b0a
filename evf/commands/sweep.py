"""``evf sweep``: every experiment file x seed, then the results table (rows = configs, columns = dataset/split).

    evf sweep experiments/ablations/tab4/*.yaml --base experiments/base.yaml --seeds 0 1 2 --out results/tab4
    evf sweep "experiments/fusion/*.yaml" --seeds 0 1 --out results/fusion -- --trainer.max_steps 200
    evf sweep experiments/paper/*.yaml --base experiments/base.yaml --seeds 0 --slurm --gpus 4 --sbatch partition=gpu

Each run is ``evf fit --config <base>... --config <file> --seed_everything S --test_after_fit true
--run_dir <out>/runs/<config>/seed<S> <overrides after -->``, run one after another here (a
subprocess each) or as one SLURM job array with ``--slurm``. A run is finished when its
``metrics.json`` exists (written atomically), so re-running a sweep skips finished runs and resumes
interrupted ones from their ``last.ckpt``. ``evf table <out>`` rebuilds the table at any time.
A sweep locks ``<out>`` (``<out>/.evf.lock``) and each run its run folder: a second sweep on the same
``<out>`` stops with one line naming the first, while a sweep restarted after a crash carries on.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from evf.errors import OneLineParser, UserError
from evf.io import write_text_atomic
from evf.locks import FolderLock
from evf.results import METRICS_FILE, RUN_FILE, SWEEP_FILE, check_metric, format_cell, write_tables
from evf.slurm import device_overrides, render_array


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = OneLineParser(prog="evf sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("experiments", nargs="+", help="experiment YAML files or globs (quote globs to keep their order)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per config (default: 0)")
    parser.add_argument("--out", default="results", help="results folder (runs/, results.md, results.csv)")
    parser.add_argument("--base", action="append", default=[], help="YAML put before every experiment file (repeatable)")
    parser.add_argument("--metric", default="cIoU", help="table metric: cIoU, gIoU, P@0.5 ... (default cIoU)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine (default 1)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands of unfinished runs and exit")
    parser.add_argument("--slurm", action="store_true", help="run as a SLURM job array instead of here")
    parser.add_argument("--no_submit", action="store_true", help="with --slurm: only write <out>/sweep.sbatch")
    parser.add_argument("--nodes", type=int, default=1, help="with --slurm: nodes per run")
    parser.add_argument("--gpus", type=int, default=1, help="with --slurm: GPUs per node (0 = CPU)")
    parser.add_argument("--sbatch", action="append", default=[], help="with --slurm: extra #SBATCH option, e.g. partition=gpu or time=12:00:00 (repeatable)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)} (put LightningCLI overrides after '--')")
    return args, overrides


def expand(patterns: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"no experiment file matches {pattern}")
        for match in map(Path, matches):
            if not match.is_file():
                raise FileNotFoundError(f"experiment file not found: {match}")
            if match.resolve() not in {f.resolve() for f in files}:
                files.append(match)
    return files


def config_names(files: Sequence[Path]) -> list[str]:
    """Row labels: paths relative to the files' common folder, without ``.yaml``."""
    parents = [f.resolve().parent for f in files]
    common = Path(os.path.commonpath(parents))
    names = [f.resolve().with_suffix("").relative_to(common).as_posix() for f in files]
    if len(set(names)) != len(names):
        raise UserError(f"experiment files give duplicate names: {names}")
    return names


def plan(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    for base in args.base:
        if not Path(base).is_file():
            raise FileNotFoundError(f"base config not found: {base}")
    files = expand(args.experiments)
    runs = []
    for file, name in zip(files, config_names(files)):
        for seed in args.seeds:
            run_dir = Path(args.out) / "runs" / name / f"seed{seed}"
            configs = [*args.base, str(file)]
            command = [sys.executable, "-m", "evf.cli", "fit", *[a for c in configs for a in ("--config", c)],
                       "--seed_everything", str(seed), "--test_after_fit", "true", "--run_dir", str(run_dir),
                       "--ckpt_path", "last", *overrides]  # "last": resume an interrupted run, else start fresh
            runs.append({"name": name, "seed": seed, "configs": configs, "run_dir": run_dir, "command": command,
                         "finished": (run_dir / METRICS_FILE).is_file()})
    return runs


def run_one(run: dict, env: dict[str, str]) -> tuple[bool, float]:
    """(finished, seconds) of one run, its output appended to the run's log.txt."""
    start = time.time()
    with open(run["run_dir"] / "log.txt", "a", encoding="utf-8") as handle:
        code = subprocess.call(run["command"], stdout=handle, stderr=subprocess.STDOUT, env=env)
    return code == 0 and (run["run_dir"] / METRICS_FILE).is_file(), time.time() - start


def run_here(todo: list[dict], jobs: int = 1) -> list[dict]:
    """Runs ``jobs`` at a time; with several, each child gets an equal share of the CPU threads
    (unless ``OMP_NUM_THREADS`` is set), so parallel runs do not oversubscribe the cores."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    failed, done = [], 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, run, env): run for run in todo}
        for future in as_completed(futures):
            run, (ok, seconds) = futures[future], future.result()
            done += 1
            if ok:
                print(f"[{done}/{len(todo)}] {run['name']} seed {run['seed']} done in {seconds:.0f}s -> {run['run_dir']}", flush=True)
            else:
                print(f"[{done}/{len(todo)}] {run['name']} seed {run['seed']} failed; see {run['run_dir'] / 'log.txt'}", flush=True)
                failed.append(run)
    return failed


def submit(args: argparse.Namespace, todo: list[dict], out: Path) -> int:
    commands = [run["command"] for run in todo]
    commands = [c + device_overrides(args.nodes, args.gpus) for c in commands]
    logs = [str(run["run_dir"] / "log.txt") for run in todo]
    script = out / "sweep.sbatch"
    write_text_atomic(script, render_array(commands, logs, f"evf-sweep-{out.name}", str(out), args.nodes, args.gpus, args.sbatch))
    print(f"wrote {script} ({len(todo)} array tasks)")
    if args.no_submit:
        return 0
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found: run on a SLURM login node, or use --no_submit and submit the script yourself")
    job = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True).stdout.strip()
    table = f"{sys.executable} -m evf.cli table {out} --metric {args.metric}"
    after = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{job.split(';')[0]}", "--job-name=evf-table",
                            f"--output={out}/slurm-table-%j.out", "--wrap", table], check=True, capture_output=True, text=True)
    print(f"submitted array job {job}; table job {after.stdout.strip()} writes {out}/results.md when it ends")
    return 0


def main(argv: Sequence[str]) -> int:
    args, overrides = parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    check_metric(args.metric)  # before any run: the table is written after the last one
    out = Path(args.out)
    runs = plan(args, overrides)
    todo = [r for r in runs if not r["finished"]]
    print(f"{len(runs)} runs ({len(runs) // len(args.seeds)} configs x {len(args.seeds)} seeds): "
          f"{len(runs) - len(todo)} finished, {len(todo)} to run")
    if args.dry_run:
        for run in todo:
            print(" ".join(run["command"]))
        return 0
    with FolderLock(out / ".evf.lock", f"sweep folder {out}"):  # before anything is written under it
        return run_sweep(args, runs, todo, overrides)


def run_sweep(args: argparse.Namespace, runs: list[dict], todo: list[dict], overrides: list[str]) -> int:
    out = Path(args.out)
    names = list(dict.fromkeys(r["name"] for r in runs))
    write_text_atomic(out / SWEEP_FILE, json.dumps({"configs": names, "seeds": args.seeds, "base": args.base,
                                                    "overrides": overrides}, indent=2) + "\n")
    for run in todo:
        info = {k: run[k] for k in ("name", "seed", "configs", "command")}
        write_text_atomic(run["run_dir"] / RUN_FILE, json.dumps(info, indent=2) + "\n")
    if args.slurm:
        return submit(args, todo, out) if todo else 0
    failed = run_here(todo, args.jobs)
    if any(r["finished"] for r in runs) or len(failed) < len(todo):
        md, csv_path, table = write_tables(out, metric=args.metric)
        print(f"wrote {md} and {csv_path}")
        for row in table.rows:
            print(f"  {row}: " + ", ".join(f"{c} {format_cell(table.stats(row, c))}" for c in table.columns))
    if failed:
        raise UserError(f"{len(failed)} of {len(todo)} runs failed, first: {failed[0]['run_dir'] / 'log.txt'}")
    return 0
