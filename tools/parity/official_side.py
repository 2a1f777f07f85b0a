"""The official side of the parity harness. Runs in a separate environment that can import the official
EVF-SAM checkout (torchscale, hydra, cv2...), never in the project's.

    python official_side.py photos  --out DIR
    python official_side.py build   --checkout PATH --family sam1 --release DIR [--beit large] [--seed 0]
    python official_side.py infer   --checkout PATH --family sam1 --release DIR --images ... --prompts FILE --out F.pt

``build`` instantiates the official model class with seeded random weights and writes a release folder
(config.json, pytorch_model.bin and model.safetensors, tokenizer files); ``infer`` loads that folder with the
official ``from_pretrained`` and runs the official inference path (``inference.py``'s preprocessing and
``model.inference``), recording every intermediate through hooks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

# family -> (official module, class, sam_scale, model_type of inference.py)
FAMILIES = {
    "sam1": ("model.evf_sam", "EvfSamModel", "huge", "ori"),
    "sam2": ("model.evf_sam2", "EvfSam2Model", "large", "sam2"),
    "sam2_tiny": ("model.evf_sam2", "EvfSam2Model", "tiny", "sam2"),
    "effi_s": ("model.evf_effisam", "EvfEffiSamModel", "small", "effi"),
    "effi_ti": ("model.evf_effisam", "EvfEffiSamModel", "tiny", "effi"),
}
PHOTOS = ("astronaut", "coffee", "chelsea")


def import_checkout(checkout: str):
    checkout = str(Path(checkout).resolve())
    os.chdir(checkout)  # the vendored SAM-2 initialises Hydra with a path relative to the checkout root
    sys.path.insert(0, checkout)


def official_class(family: str):
    import importlib

    module, name, _, _ = FAMILIES[family]
    mod = importlib.import_module(module)
    from model.configuration_evf import EvfConfig

    return getattr(mod, name), EvfConfig


def cmd_photos(args):
    """Real photos bundled with scikit-image, as PNG (lossless) and one JPEG (decoder differences show)."""
    from PIL import Image
    from skimage import data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = getattr(data, name)()
        Image.fromarray(image).save(out / f"{name}.png")
    Image.fromarray(data.coffee()).save(out / "coffee.jpg", quality=90)


def cmd_build(args):
    import_checkout(args.checkout)
    cls, config_cls = official_class(args.family)
    _, arch, sam_scale, _ = FAMILIES[args.family]
    width = {"large": 1024, "base": 768}[args.beit]
    config = config_cls(hidden_size=width, out_dim=256, mm_extractor_scale=args.beit, sam_scale=sam_scale,
                        architectures=[arch], torch_dtype="float16")
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # only where the random init runs; the file is the same either way
        model = cls(config).eval()
    # Random init leaves the prompt token at std ~0.25 where trained SAM prompt embeddings are O(1); scaling the
    # projector's last layer makes the masks depend visibly on the prompt, so the comparison can see prompt bugs.
    model.text_hidden_fcs[0][2].weight.data.mul_(args.prompt_scale)
    model.text_hidden_fcs[0][2].bias.data.mul_(args.prompt_scale)
    release = Path(args.release)
    release.mkdir(parents=True, exist_ok=True)
    # SAM-1 releases are all fp16; the EVF-SAM2 file keeps BEiT-3 + projector in fp32 and SAM-2 in fp16 (spec T14)
    state = {}
    for key, value in model.state_dict().items():
        keep32 = args.family.startswith("sam2") and not key.startswith("visual_model.")
        state[key] = value.detach().to("cpu", torch.float32 if keep32 else torch.float16).contiguous()
    from safetensors.torch import save_file

    save_file(state, str(release / "model.safetensors"), metadata={"format": "pt"})
    if not args.no_bin:
        torch.save(state, release / "pytorch_model.bin")
    cfg = config.to_dict()
    cfg.update(architectures=[arch], torch_dtype="float16")
    (release / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(args.spm, release / "sentencepiece.bpe.model")
    (release / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
        "cls_token": "<s>", "mask_token": "<mask>"}))
    (release / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer",
                                                              "model_max_length": 1000000000000000019884624838656}))
    if args.multitask:  # the multitask releases add "[semantic]" right after the base vocabulary
        from transformers import AutoTokenizer

        base = len(AutoTokenizer.from_pretrained(str(release), use_fast=False))
        (release / "added_tokens.json").write_text(json.dumps({"[semantic]": base}))
    print(f"wrote {release} ({sum(v.numel() for v in state.values()):,} values)")


class Recorder:
    """Forward hooks that keep the last inputs/outputs of the official modules we compare."""

    def __init__(self, model, family: str):
        self.out: dict[str, torch.Tensor] = {}
        model.mm_extractor.beit3.register_forward_hook(self.beit3)
        model.text_hidden_fcs[0].register_forward_hook(lambda m, i, o: self.put("projector", o[:, 0]))
        sam = model.visual_model
        decoder = sam.sam_mask_decoder if family.startswith("sam2") else sam.mask_decoder
        decoder.register_forward_pre_hook(self.decoder_inputs, with_kwargs=True)
        owner = sam if family == "sam1" else model  # whose postprocess_masks the official inference calls
        original = owner.postprocess_masks

        def postprocess(masks, *a, **kw):
            self.put("low_res_logits", masks[:, 0])
            return original(masks, *a, **kw)

        owner.postprocess_masks = postprocess
        # model.inference re-encodes the image for every prompt; the same input gives the same output, so
        # memoise it (the harness's cost, not the compared computation)
        name = "forward_image" if family.startswith("sam2") else None
        encoder = sam if name else sam.image_encoder
        original_forward = getattr(encoder, name or "forward")
        memo = {}

        def memoised(images, *a, **kw):
            key = (tuple(images.shape), images.float().sum().item(), images.float().abs().sum().item())
            if key not in memo:
                memo.clear()
                memo[key] = original_forward(images, *a, **kw)
            return memo[key]

        setattr(encoder, name or "forward", memoised)

    def put(self, name, value):
        self.out[name] = value.detach().float().cpu().clone()

    def beit3(self, module, inputs, output):
        self.put("encoder_out", output["encoder_out"])
        self.put("cls_feature", output["encoder_out"][:, 0])

    def decoder_inputs(self, module, args, kwargs):
        self.put("image_embedding", kwargs["image_embeddings"])
        for i, level in enumerate(kwargs.get("high_res_features") or []):
            self.put(f"high_res_{i}", level)


def cmd_infer(args):
    import_checkout(args.checkout)
    import cv2
    from inference import beit3_preprocess, sam_preprocess
    from transformers import AutoTokenizer

    cls, _ = official_class(args.family)
    model_type = FAMILIES[args.family][3]
    tokenizer = AutoTokenizer.from_pretrained(args.release, padding_side="right", use_fast=False)
    model = cls.from_pretrained(args.release, low_cpu_mem_usage=True, torch_dtype=torch.float32).eval()
    check_weights_equal_file(model, Path(args.release) / "model.safetensors", tuple(args.unused_keys))
    model.to(args.device)
    recorder = Recorder(model, args.family)
    prompts = json.loads(Path(args.prompts).read_text())
    results = {}
    for path in args.images:
        image_np = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        image_beit = beit3_preprocess(image_np, 224).to(args.device)
        image_sam, resize_shape = sam_preprocess(image_np, model_type=model_type)
        image_sam = image_sam.to(args.device)
        per_image = {"pixels": torch.from_numpy(image_np.copy()), "beit_view": image_beit.float().cpu(),
                     "sam_view": image_sam.float().cpu()}
        for j, prompt in enumerate(prompts):
            input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(args.device)
            with torch.no_grad():
                logits = model.inference(image_sam[None], image_beit[None], input_ids, resize_list=[resize_shape],
                                         original_size_list=[image_np.shape[:2]])
            stages = dict(recorder.out)
            stages.update(token_ids=input_ids[0].cpu(), final_logits=logits[0].float().cpu())
            per_image[j] = stages
            print(f"official {Path(path).name} prompt {j}: {len(input_ids[0])} tokens, "
                  f"{(logits > 0).float().mean().item():.3f} foreground", flush=True)
        results[Path(path).name] = per_image
    torch.save(results, args.out)


def check_weights_equal_file(model, weights: Path, unused: tuple[str, ...] = ()):
    """The official loader must have put exactly the file's values into the model (no silent renames/skips);
    ``unused``: keys of the file the official class has no place for (SAM-2.1-only video tensors)."""
    from safetensors.torch import load_file

    saved = {k: v for k, v in load_file(str(weights)).items() if k not in unused}
    state = model.state_dict()
    missing = sorted(set(saved) ^ set(state))
    if missing:
        raise SystemExit(f"official from_pretrained key mismatch: {missing[:4]}")
    bad = [k for k in saved if not torch.equal(saved[k].float(), state[k].float())]
    if bad:
        raise SystemExit(f"official from_pretrained changed {len(bad)} tensors, e.g. {bad[:3]}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("photos")
    p.add_argument("--out", required=True)
    for name in ("build", "infer"):
        p = sub.add_parser(name)
        p.add_argument("--checkout", required=True)
        p.add_argument("--family", choices=sorted(FAMILIES), required=True)
        p.add_argument("--release", required=True)
        p.add_argument("--device", default="cpu")
        if name == "build":
            p.add_argument("--beit", choices=("base", "large"), default="large")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--prompt-scale", type=float, default=4.0)
            p.add_argument("--spm", required=True, help="a sentencepiece.bpe.model for the tokenizer files")
            p.add_argument("--multitask", action="store_true", help="add added_tokens.json with [semantic]")
            p.add_argument("--no-bin", action="store_true", help="write model.safetensors only")
        else:
            p.add_argument("--images", nargs="+", required=True)
            p.add_argument("--prompts", required=True, help="JSON list of prompts")
            p.add_argument("--out", required=True)
            p.add_argument("--unused-keys", nargs="*", default=[], help="file keys the official class cannot hold")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 on a GPU too
    {"photos": cmd_photos, "build": cmd_build, "infer": cmd_infer}[args.cmd](args)


if __name__ == "__main__":
    main()
