"""Compare the two sides' recorded intermediates and print one Markdown table per family.

    python tools/parity/compare.py official.pt ours.pt [--title "SAM-1"]
"""
from __future__ import annotations

import argparse

import torch

STAGES = ("pixels", "beit_view", "sam_view", "token_ids", "encoder_out", "cls_feature", "projector",
          "image_embedding", "high_res_0", "high_res_1", "low_res_logits", "final_logits")
LOGIT_TOLERANCE = 1e-4


def stage_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if not a.is_floating_point():
        return "equal" if torch.equal(a, b) else f"{int((a != b).sum())} differ"
    return f"{(a.float() - b.float()).abs().max().item():.1e}"


def mask_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int, float]:
    """(IoU, differing pixels, foreground fraction of the official mask) of logits > 0."""
    ma, mb = a > 0, b > 0
    union = (ma | mb).sum().item()
    iou = (ma & mb).sum().item() / union if union else 1.0
    return iou, int((ma ^ mb).sum()), ma.float().mean().item()


def compare(official: dict, ours: dict) -> tuple[list[str], bool]:
    """Rows of a Markdown table (one per image and prompt) and whether all are within the targets."""
    header = "| image | prompt | " + " | ".join(s for s in STAGES) + " | mask IoU | pixels differing | fg |"
    rows = [header, "|" + "---|" * (len(STAGES) + 5)]
    ok = True
    for image, theirs in official.items():
        mine = ours[image]
        prompts = sorted(k for k in theirs if isinstance(k, int))
        for j in prompts:
            cells = []
            for stage in STAGES:
                source_a = theirs if stage in ("pixels", "beit_view", "sam_view") else theirs[j]
                source_b = mine if stage in ("pixels", "beit_view", "sam_view") else mine[j]
                if stage not in source_a and stage not in source_b:
                    cells.append("–")
                    continue
                if stage not in source_a or stage not in source_b:
                    cells.append("missing")
                    ok = False
                    continue
                cells.append(stage_diff(source_a[stage], source_b[stage]))
            iou, differing, fg = mask_agreement(theirs[j]["final_logits"], mine[j]["final_logits"])
            logit_ok = cells[STAGES.index("low_res_logits")] not in ("missing",) and \
                theirs[j]["low_res_logits"].shape == mine[j]["low_res_logits"].shape and \
                (theirs[j]["low_res_logits"] - mine[j]["low_res_logits"]).abs().max().item() <= LOGIT_TOLERANCE
            ok &= logit_ok and differing <= 1 and torch.equal(theirs[j]["token_ids"], mine[j]["token_ids"])
            rows.append(f"| {image} | {j} | " + " | ".join(cells) + f" | {iou:.6f} | {differing} | {fg:.3f} |")
    return rows, ok


def summary(official: dict, ours: dict) -> dict[str, str]:
    """One table row for a family: the worst case of each stage over all images and prompts."""
    worst: dict[str, str] = {}
    for stage in STAGES:
        diffs = []
        for image, theirs in official.items():
            mine = ours[image]
            keys = [None] if stage in ("pixels", "beit_view", "sam_view") else [k for k in theirs if isinstance(k, int)]
            for j in keys:
                a, b = (theirs, mine) if j is None else (theirs[j], mine[j])
                if stage in a and stage in b:
                    diffs.append(stage_diff(a[stage], b[stage]))
        if not diffs:
            worst[stage] = "–"
        elif all(d == "equal" for d in diffs):
            worst[stage] = "equal"
        elif any(d.startswith(("shape", "missing")) or d.endswith("differ") for d in diffs):
            worst[stage] = next(d for d in diffs if d.startswith(("shape", "missing")) or d.endswith("differ"))
        else:
            worst[stage] = max(diffs, key=float)
    ious, pixels = [], []
    for image, theirs in official.items():
        for j in (k for k in theirs if isinstance(k, int)):
            iou, differing, _ = mask_agreement(theirs[j]["final_logits"], ours[image][j]["final_logits"])
            ious.append(iou)
            pixels.append(differing)
    worst["mask IoU (min)"] = f"{min(ious):.6f}"
    worst["differing pixels (max)"] = str(max(pixels))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("official")
    parser.add_argument("ours")
    parser.add_argument("--title", default="")
    parser.add_argument("--summary", nargs="*", metavar="LABEL OFFICIAL OURS",
                        help="further triples: print one worst-case line per (label, official.pt, ours.pt)")
    args = parser.parse_args(argv)
    if args.summary is not None:
        triples = [(args.title or "row", args.official, args.ours)]
        triples += [tuple(args.summary[i:i + 3]) for i in range(0, len(args.summary), 3)]
        rows = [(label, summary(torch.load(a), torch.load(b))) for label, a, b in triples]
        columns = list(rows[0][1])
        print("| row | " + " | ".join(columns) + " |")
        print("|" + "---|" * (len(columns) + 1))
        for label, worst in rows:
            print(f"| {label} | " + " | ".join(worst[c] for c in columns) + " |")
        return 0
    rows, ok = compare(torch.load(args.official), torch.load(args.ours))
    if args.title:
        print(f"### {args.title}\n")
    print("\n".join(rows))
    print(f"\nwithin targets (logits <= {LOGIT_TOLERANCE:g}, at most one differing pixel, equal token ids): {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
