"""Write ``tests/data/efficientsam_reference.pt``: outputs of the OFFICIAL EfficientSAM / EVF-SAM code on a
tiny seeded configuration, for ``tests/test_efficientsam_parity.py``.

Dev-time tool: not installed, not run by the test suite. It imports the official code from a checkout
(hustvl/EVF-SAM, default ``/work/official``) and nothing from ``evf``, so the fixture is the official
code's word, not ours. The official ``inference.py`` needs cv2, torchvision and transformers::

    /work/venv-official/bin/python tools/parity/efficientsam_reference.py \
        [--official /work/official] [--pre-9d00853 old_inference.py] [--out tests/data/efficientsam_reference.pt]

``--pre-9d00853`` takes the ``inference.py`` of the commit before 9d00853 (``git show 9d00853^:inference.py``),
whose EfficientSAM view was longest-side resize -> normalise -> stretch; its output is then stored too.

The fixture holds: our config field names for the tiny model, the official state dict (seeded values on the
fp16 grid, stored in fp16; both sides run in fp32 on exactly these values), and
(i) the mask decoder on fixed embeddings/prompt tokens, (ii) the image encoder on a fixed image,
(iii) a strided sample and checksums of the official 1024-px EfficientSAM view of a small uint8 image.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The tiny model, in OUR EfficientSamConfig field names (the test builds from these).
CONFIG = {"img_size": 128, "patch_size": 16, "encoder_dim": 16, "encoder_depth": 2, "encoder_heads": 2, "neck_dim": 16,
          "decoder_depth": 2, "decoder_mlp_dim": 32, "decoder_heads": 2, "upscaling_dims": (8, 4),
          "iou_head_hidden_dim": 16, "pretrain_img_size": 224}
VIEW_STRIDE = 32  # the stored sample of the 3x1024x1024 view is every 32nd row/column (64th for the old view)
SAM_MEAN, SAM_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_official_tiny(official: Path) -> nn.Module:
    """The official classes wired as ``build_efficient_sam`` wires them, with the tiny widths of CONFIG
    (``build_efficient_sam`` itself fixes every width but the encoder's)."""
    sys.path.insert(0, str(official / "model" / "EfficientSAM"))
    from efficient_sam.efficient_sam import EfficientSam
    from efficient_sam.efficient_sam_decoder import MaskDecoder, PromptEncoder
    from efficient_sam.efficient_sam_encoder import ImageEncoderViT
    from efficient_sam.two_way_transformer import TwoWayTransformer

    c = CONFIG
    encoder = ImageEncoderViT(img_size=c["img_size"], patch_size=c["patch_size"], in_chans=3,
                              patch_embed_dim=c["encoder_dim"], normalization_type="layer_norm",
                              depth=c["encoder_depth"], num_heads=c["encoder_heads"], mlp_ratio=4.0,
                              neck_dims=[c["neck_dim"], c["neck_dim"]], act_layer=nn.GELU)
    grid = encoder.image_embedding_size
    transformer = TwoWayTransformer(depth=c["decoder_depth"], embedding_dim=c["neck_dim"], num_heads=c["decoder_heads"],
                                    mlp_dim=c["decoder_mlp_dim"], activation=nn.GELU, normalize_before_activation=False)
    decoder = MaskDecoder(transformer_dim=c["neck_dim"], transformer=transformer, num_multimask_outputs=3,
                          activation=nn.GELU, normalization_type="layer_norm", normalize_before_activation=False,
                          iou_head_depth=2, iou_head_hidden_dim=c["iou_head_hidden_dim"],
                          upscaling_layer_dims=list(c["upscaling_dims"]))
    prompt = PromptEncoder(embed_dim=c["neck_dim"], image_embedding_size=(grid, grid),
                           input_image_size=(c["img_size"], c["img_size"]))
    return EfficientSam(image_encoder=encoder, prompt_encoder=prompt, decoder_max_num_input_points=6,
                        mask_decoder=decoder).eval()


@torch.no_grad()
def seed_weights(model: nn.Module, seed: int = 0) -> None:
    """Every tensor random (constant initial values such as norm weights, zero biases, the zero position
    table would hide mistakes): norm weights near 1, matrices ~ 1/sqrt(fan_in), the rest O(0.1-1).
    Values are rounded to the fp16 grid so the fixture can store them in fp16 (half the size) while
    both implementations still run in fp32 on exactly these values."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("pos_embed") or "gaussian_matrix" in name:
            value = noise * (0.5 if name.endswith("pos_embed") else 1.0)
        elif tensor.ndim >= 2:
            value = noise / tensor[0].numel() ** 0.5
        elif bool((tensor == 1).all()):
            value = 1 + 0.2 * noise
        else:
            value = 0.2 * noise
        tensor.copy_(value.half().float())


@torch.no_grad()
def decoder_cases(model: nn.Module) -> dict:
    """As ``EvfEffiSamModel`` calls it: ``mask_decoder(emb, prompt_encoder.get_dense_pe(), sparse, multimask)``;
    ``multimask_output=True`` gives tokens 1-3, ``False`` token 0 (the one EVF-SAM uses)."""
    g = torch.Generator().manual_seed(1)
    c, grid = CONFIG["neck_dim"], CONFIG["img_size"] // CONFIG["patch_size"]
    pe = model.prompt_encoder.get_dense_pe()
    out = {}
    # per_image: one EVF prompt token for each of two images; shared: three 2-token prompts on one image
    for case, (n_img, n_prompt, n_tok) in {"per_image": (2, 1, 1), "shared": (1, 3, 2)}.items():
        emb = torch.randn(n_img, c, grid, grid, generator=g)
        tokens = torch.randn(n_img, n_prompt, n_tok, c, generator=g)
        single, single_iou = model.mask_decoder(emb, pe, tokens, multimask_output=False)
        multi, multi_iou = model.mask_decoder(emb, pe, tokens, multimask_output=True)
        masks = torch.cat([single, multi], 1) if case == "per_image" else single.clone()  # file size: token 0 only
        out[case] = {"embeddings": emb, "tokens": tokens.reshape(n_img * n_prompt, n_tok, c),
                     "masks": masks, "iou": torch.cat([single_iou, multi_iou], 1)}
    return out


def sam_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> SAM's 0-255 mean/std normalisation, as a view would feed the encoder."""
    mean, std = torch.tensor(SAM_MEAN).view(-1, 1, 1), torch.tensor(SAM_STD).view(-1, 1, 1)
    return (pixels.float() - mean) / std


@torch.no_grad()
def encoder_case(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(2)
    s = CONFIG["img_size"]
    pixels = torch.randint(0, 256, (1, 3, s, s), generator=g, dtype=torch.uint8)  # uint8 keeps the file small
    return {"pixels": pixels, "embeddings": model.image_encoder(sam_normalize(pixels))}


def view_image() -> np.ndarray:
    """A small uint8 image with smooth structure and noise, 37x53 (odd sizes, upscaled ~28x)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:37, 0:53]
    base = np.stack([yy * 6, xx * 4, (yy + xx) * 3], -1) + rng.integers(0, 60, (37, 53, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def view_record(view: torch.Tensor, stride: int = VIEW_STRIDE) -> dict:
    v = view.double()
    return {"sample": view[:, ::stride, ::stride].clone(), "stride": stride, "sum": v.sum(), "sum_sq": (v * v).sum()}


def view_cases(official: Path, pre_9d00853: Path | None) -> dict:
    sys.path.insert(0, str(official))
    image = view_image()
    head, _ = load_module("official_inference", official / "inference.py").sam_preprocess(image, model_type="effi")
    out = {"image": torch.from_numpy(image), "head": view_record(head)}
    if pre_9d00853 is not None:
        old, resize_shape = load_module("official_inference_pre_9d00853", pre_9d00853).sam_preprocess(image, model_type="effi")
        out["pre_9d00853"] = view_record(old, 2 * VIEW_STRIDE) | {"input_size": tuple(resize_shape)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=Path("/work/official"))
    parser.add_argument("--pre-9d00853", type=Path, default=None, help="inference.py of the commit before 9d00853")
    parser.add_argument("--out", type=Path, default=Path("tests/data/efficientsam_reference.pt"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_official_tiny(args.official)
    seed_weights(model)
    fixture = {"config": CONFIG, "state_dict": {k: v.half() for k, v in model.state_dict().items()},  # exact: fp16-grid values
               "decoder": decoder_cases(model), "encoder": encoder_case(model),
               "view": view_cases(args.official, args.pre_9d00853),
               "source": f"official EfficientSAM / EVF-SAM code at {args.official}, torch {torch.__version__}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    for case, d in fixture["decoder"].items():
        print(f"decoder {case}: masks {tuple(d['masks'].shape)} |max| {d['masks'].abs().max():.3f}, iou {d['iou'].flatten()[:4]}")
    print(f"encoder: {tuple(fixture['encoder']['embeddings'].shape)}; view keys {sorted(fixture['view'])}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
