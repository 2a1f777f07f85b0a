"""Our side of the parity harness: load the release folder with ``EVFSAM.from_pretrained`` and record the same
intermediates as official_side.py, through the library's public API only.

    python tools/parity/our_side.py --release DIR --images a.png b.jpg --prompts prompts.json --out ours.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evf.checkpoint import iter_tensors, load_state_dict
from evf.io import read_image
from evf.model import EVFSAM


def record(model: EVFSAM, image, prompt: str, session) -> dict[str, torch.Tensor]:
    embedding = session.embedding
    device = next(model.parameters()).device
    tokens = model.encoder.tokenizer([prompt])
    ids, padding = tokens["input_ids"].to(device), tokens["padding_mask"].to(device)
    beit_view = model.encoder.image_view(image)[None].to(device)
    _, input_size = model.sam.image_view(image)
    encoder_out = model.encoder.encode(beit_view, ids, padding)
    projector = model.prompt_tokens(beit_view, ids, padding)
    low_res, _ = model.sam.decode(embedding, projector)
    final = model.sam.postprocess(low_res[:, 0], input_size, image.shape[:2])
    stages = {"token_ids": ids[0], "encoder_out": encoder_out, "cls_feature": model.encoder(beit_view, ids, padding),
              "projector": projector[:, 0], "low_res_logits": low_res[:, 0], "final_logits": final[0]}
    if hasattr(model.sam, "unpack"):  # SAM-2 packs its three FPN levels into one tensor
        high0, high1, stages["image_embedding"] = model.sam.unpack(embedding)
        stages.update(high_res_0=high0, high_res_1=high1)
    else:
        stages["image_embedding"] = embedding
    mask = session.predict([prompt])[0]
    if not torch.equal(mask.cpu(), final[0].cpu() > 0):
        raise SystemExit("ImageSession.predict disagrees with the staged calls: the harness would compare the wrong thing")
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in stages.items()}


def check_both_formats(release: Path) -> None:
    """pytorch_model.bin and model.safetensors of a release must hold the same tensors (so both load to the same
    model; the loader itself is covered by the test suite). Compared one tensor at a time to bound memory."""
    bin_state = load_state_dict(release / "pytorch_model.bin")
    for key, tensor in iter_tensors(release / "model.safetensors"):
        other = bin_state.pop(key, None)
        if other is None or not torch.equal(other, tensor):
            raise SystemExit(f"{release}: {key} differs between pytorch_model.bin and model.safetensors")
    if bin_state:
        raise SystemExit(f"{release}: pytorch_model.bin has {len(bin_state)} extra tensors, e.g. {next(iter(bin_state))}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", required=True, type=Path)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check-formats", action="store_true", help="also load pytorch_model.bin and compare")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 on a GPU too
    model = EVFSAM.from_pretrained(args.release / "model.safetensors").eval().to(args.device)
    if args.check_formats:
        check_both_formats(args.release)
    prompts = json.loads(Path(args.prompts).read_text())
    results = {}
    for path in args.images:
        image = read_image(path)
        beit_view = model.encoder.image_view(image)
        sam_view, _ = model.sam.image_view(image)
        per_image = {"pixels": torch.from_numpy(image.copy()), "beit_view": beit_view, "sam_view": sam_view}
        session = model.set_image(image)  # the SAM image embedding, once per image
        for j, prompt in enumerate(prompts):
            per_image[j] = record(model, image, prompt, session)
            print(f"ours {Path(path).name} prompt {j}: {len(per_image[j]['token_ids'])} tokens, "
                  f"{(per_image[j]['final_logits'] > 0).float().mean().item():.3f} foreground", flush=True)
        results[Path(path).name] = per_image
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
