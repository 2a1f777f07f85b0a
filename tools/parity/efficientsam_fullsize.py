"""Full-size EfficientSAM-Ti / -S: our backend vs the official code on one real photo (dev-time check, not a test).

Both get the same seeded random weights (the official module's initialisation, with every constant
tensor -- norm weights, zero biases, the zero position table -- perturbed), ours through an official-format
``{"model": state_dict}`` file loaded strictly. The photo goes through each side's own view, encoder,
mask decoder (one random 256-d prompt token, ``multimask_output=False``) and post-processing, as the
official ``inference.py --model_type effi`` runs them. Runs on the CPU in fp32::

    PYTHONPATH=$PWD /work/venv-official/bin/python tools/parity/efficientsam_fullsize.py \
        [--official /work/official] [--image /work/official/assets/zebra.jpg] [--variants ti s]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import cv2
import torch

from evf.sam import EfficientSamBackend


def official_modules(official: Path):
    sys.path.insert(0, str(official))
    sys.path.insert(0, str(official / "model" / "EfficientSAM"))
    from efficient_sam.build_efficient_sam import build_efficient_sam_vits, build_efficient_sam_vitt
    from model.evf_effisam import EvfEffiSamModel

    spec = importlib.util.spec_from_file_location("official_inference", official / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    builders = {"ti": build_efficient_sam_vitt, "s": build_efficient_sam_vits}
    return builders, inference.sam_preprocess, EvfEffiSamModel.postprocess_masks


@torch.no_grad()
def perturb_constants(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for tensor in model.state_dict().values():
        if tensor.numel() > 1 and bool((tensor == tensor.flatten()[0]).all()):
            scale = 0.1 if bool((tensor == 1).all()) else 0.02
            tensor.add_(scale * torch.randn(tensor.shape, generator=generator))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max |diff| {(a - b).abs().max().item():.3g} (max |value| {b.abs().max().item():.3g})"


@torch.no_grad()
def compare(variant: str, image, builders, sam_preprocess, postprocess_masks) -> None:
    torch.manual_seed(0)
    official = builders[variant]().eval()
    perturb_constants(official, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"efficient_sam_vit{variant[0]}.pt"
        torch.save({"model": official.state_dict()}, path)
        ours = EfficientSamBackend(variant=variant, checkpoint=str(path)).eval()

    view_official, _ = sam_preprocess(image, model_type="effi")
    view_ours, input_size = ours.image_view(image)
    emb_official = official.image_encoder(view_official[None])
    emb_ours = ours.encode(view_ours[None])

    token = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(2))
    low_official, iou_official = official.mask_decoder(  # as EvfEffiSamModel.inference calls it
        image_embeddings=emb_official, image_pe=official.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=token.unsqueeze(0), multimask_output=False)
    mask_official = postprocess_masks(None, low_official[:, :1], input_size=None, original_size=image.shape[:2])[:, 0] > 0
    low_ours, iou_ours = ours.decode(emb_ours, token)
    mask_ours = ours.postprocess(low_ours[:, 0], input_size, image.shape[:2]) > 0

    union = (mask_official | mask_ours).sum().item()
    iou = (mask_official & mask_ours).sum().item() / max(union, 1)
    print(f"EfficientSAM-{variant.upper()} on {image.shape[1]}x{image.shape[0]}:")
    print(f"  view            {max_diff(view_ours, view_official)}")
    print(f"  embeddings      {max_diff(emb_ours, emb_official)}")
    print(f"  low-res logits  {max_diff(low_ours, low_official)}; predicted IoU {max_diff(iou_ours, iou_official)}")
    print(f"  mask            IoU {iou:.6f}, {(mask_official ^ mask_ours).sum().item()} differing of "
          f"{mask_official.numel()} pixels, foreground {mask_official.float().mean().item():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=Path("/work/official"))
    parser.add_argument("--image", type=Path, default=Path("/work/official/assets/zebra.jpg"))
    parser.add_argument("--variants", nargs="+", default=["ti", "s"], choices=["ti", "s"])
    args = parser.parse_args()
    builders, sam_preprocess, postprocess_masks = official_modules(args.official)
    image = cv2.cvtColor(cv2.imread(str(args.image)), cv2.COLOR_BGR2RGB)  # as the official inference.py reads it
    for variant in args.variants:
        compare(variant, image, builders, sam_preprocess, postprocess_masks)


if __name__ == "__main__":
    main()
