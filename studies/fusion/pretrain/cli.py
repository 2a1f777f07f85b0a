"""``python -m studies.fusion.pretrain``: write the tiny models' pre-trained weights (studies/fusion/README.md).

Bad input is reported as one line on stderr (``pretrain: error: ...``, exit 2), as ``evf`` commands do.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from evf.io import atomic_path
from studies.fusion.pretrain.encoders import build_encoder, grounding_probe, location_probe, pretrain_encoder, save_encoder
from studies.fusion.pretrain.sam import pretrain_sam

OUTPUTS = {"sam": "sam1_tiny.pth", "beit3": "beit3_tiny.pth", "clip": "clip_tiny.pth", "vilt": "vilt_tiny"}
PROG = "python -m studies.fusion.pretrain"


def fail(message: str) -> int:
    print(f"pretrain: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    from evf.sam import Sam1Backend

    p = argparse.ArgumentParser(prog=PROG, description="miniature pre-training of the tiny SAM-1 and encoders")
    p.add_argument("--out", required=True, help="folder for the weights (" + ", ".join(OUTPUTS.values()) + ")")
    p.add_argument("--what", nargs="+", default=list(OUTPUTS), choices=list(OUTPUTS))
    p.add_argument("--sam_steps", type=int, default=1500)
    p.add_argument("--encoder_steps", type=int, default=3000)
    p.add_argument("--objects", type=int, default=None, help="objects per caption (default: all visible)")
    p.add_argument("--grounding", action="store_true",
                   help="BEiT-3 / ViLT: phrase-grounding pre-training instead (writes *_grounded weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing weights")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.grounding and not set(args.what) <= {"beit3", "vilt"}:
        return fail("--grounding pre-trains fusion encoders only: use --what beit3 and/or vilt")
    names = {w: OUTPUTS[w].replace("_tiny", "_tiny_grounded") if args.grounding else OUTPUTS[w] for w in args.what}
    existing = [str(out / names[w]) for w in args.what if (out / names[w]).exists()]
    if existing and not args.force:
        return fail(f"{existing[0]} exists; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for what in args.what:
        torch.manual_seed(args.seed)
        target = out / names[what]  # written atomically: a stopped run never leaves half-written weights
        if what == "sam":
            sam = Sam1Backend(variant="tiny")
            pretrain_sam(sam, args.sam_steps, seed=args.seed)
            with atomic_path(target) as tmp:
                torch.save(sam.model.state_dict(), tmp)
        else:
            encoder = build_encoder(what)
            objective = pretrain_encoder(encoder, args.encoder_steps, objects=args.objects, grounding=args.grounding,
                                         seed=args.seed)
            if args.grounding:
                probe = grounding_probe(objective)
                print(f"{what}: named object's cell right {probe['own image']:.1%} of the time with the caption's image, "
                      f"{probe['other image']:.1%} with another scene's")
            elif what != "clip":
                probe = location_probe(objective)
                print(f"{what}: masked location words right {probe['own image']:.1%} of the time with the caption's image, "
                      f"{probe['other image']:.1%} with another scene's (no gap: the image is not used)")
            save_encoder(what, encoder, target)
        print(f"wrote {target}")
    return 0
