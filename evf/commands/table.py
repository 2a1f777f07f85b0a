"""``evf table <results dir>``: rebuild results.md / results.csv from the finished runs under a folder.

    evf table results/tab4                 # cIoU, rows in the sweep's order
    evf table results/tab4 --metric gIoU   # writes results_gIoU.md / .csv
"""
from __future__ import annotations

from collections.abc import Sequence

from evf.errors import OneLineParser
from evf.results import METRICS, write_tables


def main(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="evf table", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder holding finished runs (each with metrics.json), e.g. an `evf sweep --out` folder")
    parser.add_argument("--metric", default="cIoU", help=f"one of {', '.join(METRICS)} (default cIoU)")
    parser.add_argument("--out", default=None, help="where to write the tables (default: the root folder)")
    args = parser.parse_args(list(argv))
    md, csv_path, table = write_tables(args.root, args.out, args.metric)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"wrote {md} and {csv_path} ({len(table.rows)} configs)")
    return 0
