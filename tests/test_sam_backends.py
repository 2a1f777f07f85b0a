"""SAM-backend slot: one contract over every registered backend, SAM-2 specifics, official schemas and counts."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evf.encoders import Beit3Encoder
from evf.model import EVFSAM
from evf.release import to_official
from evf.sam import SAM_BACKENDS, EfficientSamBackend, Sam1Backend, Sam2Backend
from evf.sam.efficientsam import LongestSideStretchView
from evf.sam.sam2 import SquareStretchView
from evf.tokenizer import SPM_FILENAME, toy_tokenizer_dir
from evf.transforms import IMAGENET_MEAN_255, IMAGENET_STD_255
from tests.contracts import check_backend_contract

BACKENDS = list(SAM_BACKENDS)


def tiny(name: str, **kwargs):
    torch.manual_seed(0)
    return SAM_BACKENDS.create(name, tiny=True, **kwargs)


def views(backend, n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40 + 9 * i, 52, 3), dtype=np.uint8) for i in range(n)]
    return torch.stack([backend.image_view(im)[0] for im in images])


def test_every_builtin_backend_is_registered():
    assert {"sam1", "sam2", "efficientsam"} <= set(BACKENDS)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract_shapes_and_prompt_grouping(name, rgb_image):
    check_backend_contract(name, rgb_image)


@pytest.mark.parametrize("name", BACKENDS)
def test_frozen_encoder_gets_no_gradient_and_trainable_parts_change(name):
    sam = tiny(name).train()
    assert not sam.image_encoder.training  # frozen: eval mode even while training
    assert not any(p.requires_grad for m in sam.frozen_modules().values() for p in m.parameters())
    frozen_before = {f"{k}.{n}": t.clone() for k, m in sam.frozen_modules().items() for n, t in m.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in sam.named_parameters() if p.requires_grad}
    decoder_params = {id(p) for p in sam.trainable_modules()["mask_decoder"].parameters()}
    assert trainable_before and all(
        id(p) in {id(q) for m in sam.trainable_modules().values() for q in m.parameters()}
        for p in sam.parameters() if p.requires_grad)

    optimizer = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    tokens = torch.randn(2, 1, sam.prompt_dim, requires_grad=True)
    logits, _ = sam.decode(sam.embed_images(views(sam)), tokens)
    F.binary_cross_entropy_with_logits(logits, (torch.rand_like(logits) > 0.5).float()).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0  # the prompt reaches the mask
    for module in sam.frozen_modules().values():
        assert all(p.grad is None for p in module.parameters())
    with_grad = {n for n, p in sam.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    optimizer.step()

    for key, tensor in {f"{k}.{n}": t for k, m in sam.frozen_modules().items() for n, t in m.state_dict().items()}.items():
        assert torch.equal(tensor, frozen_before[key]), f"frozen {key} changed"
    changed = {n for n, p in sam.named_parameters() if n in trainable_before and not torch.equal(p, trainable_before[n])}
    assert with_grad and with_grad <= changed
    assert any(id(p) in decoder_params for n, p in sam.named_parameters() if n in changed)


def text_prompted_backward(sam) -> None:
    tokens = torch.randn(2, 1, sam.prompt_dim, requires_grad=True)
    logits, _ = sam.decode(sam.embed_images(views(sam)), tokens)
    F.binary_cross_entropy_with_logits(logits, (torch.rand_like(logits) > 0.5).float()).backward()


@pytest.mark.parametrize("name", BACKENDS)
def test_not_reached_by_text_is_exactly_what_gets_no_gradient(name):
    """Inside the trainable modules, unfrozen, a text-prompted loss leaves exactly ``NOT_REACHED_BY_TEXT`` without a
    gradient; after ``freeze`` every trainable parameter gets one (plain DDP needs both)."""
    sam = tiny(name).train()
    inside = {n: p for k, m in sam.trainable_modules().items() for n, p in sam.named_parameters()
              if any(p is q for q in m.parameters())}
    for p in inside.values():
        p.requires_grad_(True)
    text_prompted_backward(sam)
    unreached = {n for n, p in inside.items() if p.grad is None}
    assert unreached == {n for n in inside if not sam.reached_by_text(n)}
    assert unreached and all(any(n.startswith(prefix) for n in unreached) for prefix in sam.NOT_REACHED_BY_TEXT)

    sam = tiny(name).train()
    text_prompted_backward(sam)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable == {n for n in inside if sam.reached_by_text(n)}
    assert trainable == {n for n, p in sam.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("prompt,decoder", [(False, False), (False, True), (True, False), (True, True)])
def test_tab6_switches_are_respected(name, prompt, decoder):
    sam = tiny(name, train_prompt_encoder=prompt, train_mask_decoder=decoder)
    modules = sam.trainable_modules()
    for key, switch in (("prompt_encoder", prompt), ("mask_decoder", decoder)):
        names = {n for n, p in sam.named_parameters() if any(p is q for q in modules[key].parameters())}
        trainable = {n for n, p in sam.named_parameters() if n in names and p.requires_grad}
        assert trainable == ({n for n in names if sam.reached_by_text(n)} if switch else set())
    inside = {id(p) for m in modules.values() for p in m.parameters()}
    assert not any(p.requires_grad for p in sam.parameters() if id(p) not in inside)


def test_frozen_parts_stay_out_of_the_optimizer_and_its_checkpoint_state(tmp_path):
    import lightning as L

    from datamodules import SyntheticRefDataModule
    from evf.module import EVFSAMModule

    torch.manual_seed(0)
    model = EVFSAM(Beit3Encoder(size="tiny"), Sam2Backend(variant="toy", train_prompt_encoder=False), train_encoder=False)
    module = EVFSAMModule(model)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=SyntheticRefDataModule(train_size=2, val_size=1, test_size=1, batch_size=2, image_size=48))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in trainable}
    decoder = {id(p) for n, p in model.sam.model.sam_mask_decoder.named_parameters()
               if not n.startswith(("iou_prediction_head.", "pred_obj_score_head."))}  # heads no text-prompted loss reads
    expected = {id(p) for p in model.projector.parameters()} | decoder
    assert {id(p) for p in trainable} == expected  # BEiT-3, prompt encoder, image encoder, memory modules: frozen
    trainer.save_checkpoint(tmp_path / "step.ckpt")
    state = torch.load(tmp_path / "step.ckpt", map_location="cpu", weights_only=False)["optimizer_states"][0]
    indices = [i for g in state["param_groups"] for i in g["params"]]
    assert len(indices) == len(trainable)  # moments exist only for trainable (and used) parameters
    assert 0 < len(state["state"]) <= len(trainable) and set(state["state"]) <= set(indices)


# -- SAM-2 ------------------------------------------------------------------------------------
def official_evf_sam2_image_path(sam: Sam2Backend, images: torch.Tensor, tokens: torch.Tensor, multimask: bool):
    """The official EVF-SAM2 inference, spelled with sam2's own API (spec §4)."""
    m = sam.model
    backbone = m.forward_image(images)  # applies conv_s0 / conv_s1
    _, feats, _, _ = m._prepare_backbone_features(backbone)
    feats[-1] = feats[-1] + m.no_mem_embed
    sizes = [(sam.image_size // s, sam.image_size // s) for s in (4, 8, 16)]
    feats = [f.permute(1, 2, 0).reshape(len(images), -1, *hw) for f, hw in zip(feats, sizes)]
    _, dense = m.sam_prompt_encoder(points=None, boxes=None, masks=None)
    masks, iou, _, _ = m.sam_mask_decoder(
        image_embeddings=feats[2], image_pe=m.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=tokens,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=True, high_res_features=feats[:2])
    if multimask:
        best = iou.argmax(dim=1)
        masks = masks[torch.arange(len(masks)), best][:, None]
    return masks


@pytest.mark.parametrize("train_mask_decoder", [True, False])  # raw levels / conv_s0, conv_s1 folded into the embedding
@pytest.mark.parametrize("selection,multimask", [("best_iou", True), ("stability", False)])
def test_sam2_image_path_matches_the_official_procedure(train_mask_decoder, selection, multimask):
    sam = tiny("sam2", train_mask_decoder=train_mask_decoder, mask_selection=selection).eval()
    with torch.no_grad():
        for p in sam.model.sam_mask_decoder.parameters():
            p.normal_(0, 0.3)  # spread the 4 tokens' outputs so the selection matters
        images, tokens = views(sam, 1), torch.randn(3, 1, sam.prompt_dim)
        ours, _ = sam.decode(sam.embed_images(images), tokens)
        theirs = official_evf_sam2_image_path(sam, images, tokens, multimask)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_sam2_mask_selection():
    sam = tiny("sam2")
    masks = torch.randn(4, 4, 8, 8)
    masks[0, 0] = 5.0  # token 0 confidently on everywhere: stable
    masks[1, 0] = torch.linspace(-0.04, 0.04, 64).reshape(8, 8)  # every logit within +-delta: unstable
    iou = torch.tensor([[0.9, 0.1, 0.8, 0.3], [0.9, 0.2, 0.1, 0.7], [0.0, 0.5, 0.4, 0.3], [0.0, 0.1, 0.2, 0.6]])
    sam.eval()
    for selection, expected in {"single": [0, 0, 0, 0], "best_iou": [2, 3, 1, 3], "stability": [0, 3, None, None]}.items():
        sam.mask_selection = selection
        chosen, score = sam.select(masks, iou)
        for i, token in enumerate(expected):
            if token is not None:
                assert torch.equal(chosen[i, 0], masks[i, token]) and score[i, 0] == iou[i, token], (selection, i)
    sam.mask_selection = "best_iou"
    sam.train()  # training always uses token 0, as the official training code
    assert torch.equal(sam.select(masks, iou)[0], masks[:, :1])
    with pytest.raises(ValueError, match="mask_selection"):
        Sam2Backend(variant="toy", mask_selection="best")


def test_sam2_box_prompts_give_low_res_logits():
    sam = tiny("sam2").eval()
    emb = sam.embed_images(views(sam, 1))
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 127.0, 127.0]])
    logits = sam.decode_boxes(emb, boxes)
    assert logits.shape == (2, 1, sam.image_size // 4, sam.image_size // 4)
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(NotImplementedError):
        tiny("efficientsam").decode_boxes(torch.zeros(1, 32, 8, 8), boxes)


def test_sam2_versions_differ_by_the_sam21_only_keys():
    with torch.device("meta"):
        v20, v21 = Sam2Backend(variant="large", version="2.0"), Sam2Backend(variant="large", version="2.1")
    k20, k21 = set(v20.model.state_dict()), set(v21.model.state_dict())
    assert k20 < k21 and {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight"} <= k21 - k20
    assert v20.name == "sam2.0_large" and v21.name == "sam2.1_large"


def module_attributes(model: torch.nn.Module) -> dict[str, dict]:
    """Every submodule's own plain attributes (flags, sizes, thresholds): what a state dict does not show."""
    plain = (bool, int, float, str, tuple, list, type(None))
    return {name: {k: v for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, plain)}
            for name, m in model.named_modules()}


def test_cached_build_equals_the_sam2_packages_builder():
    """``build_sam2_model`` composes each config once; it must build what ``sam2.build_sam.build_sam2`` builds."""
    from sam2.build_sam import build_sam2

    from evf.sam.sam2_build import TOY_OVERRIDES, build_sam2_model, config_and_overrides

    torch.manual_seed(3)
    reference = build_sam2(config_and_overrides("2.0", "toy")[0], ckpt_path=None, device=None, mode="eval",
                           hydra_overrides_extra=list(TOY_OVERRIDES))
    expected_state = reference.state_dict()
    for _ in range(2):  # the second build comes from the cached config
        torch.manual_seed(3)
        ours = build_sam2_model("2.0", "toy")
        assert module_attributes(ours) == module_attributes(reference)
        assert ours.sam_mask_decoder.dynamic_multimask_via_stability is True and not ours.training
        state = ours.state_dict()
        assert list(state) == list(expected_state) and all(torch.equal(state[k], expected_state[k]) for k in state)


# -- views --------------------------------------------------------------------------------------
def test_sam2_view_stretches_on_uint8_like_the_official_inference(rgb_image):
    x, size = SquareStretchView(32)(rgb_image)  # 48x64 -> 32x32: a downscale
    assert x.shape == (3, 32, 32) and size == (32, 32)
    pixels = x * torch.tensor(IMAGENET_STD_255).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1)
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)  # interpolated as uint8 -> integers
    via_pil, _ = SquareStretchView(32, resize="pil")(rgb_image)
    assert (via_pil - x).abs().max() > 0  # the eval.py path is a different (antialiased) resize


def test_efficientsam_view_resizes_the_longest_side_then_stretches(rgb_image):
    x, size = LongestSideStretchView(128)(rgb_image)
    assert x.shape == (3, 128, 128) and size == (96, 128)  # 48x64 -> longest side 128
    assert x[:, -1].abs().sum() > 0  # stretched, not zero-padded


# -- official schemas -------------------------------------------------------------------------
def official_efficientsam_shapes(dim: int, heads: int, depth: int = 12) -> dict[str, tuple[int, ...]]:
    """Keys of yformer/EfficientSAM's ``efficient_sam_vit{t,s}.pt`` written out from its source, not our modules."""
    s = {"image_encoder.pos_embed": (1, 197, dim), "image_encoder.patch_embed.proj.weight": (dim, 3, 16, 16),
         "image_encoder.patch_embed.proj.bias": (dim,), "image_encoder.neck.0.weight": (256, dim, 1, 1),
         "image_encoder.neck.1.weight": (256,), "image_encoder.neck.1.bias": (256,),
         "image_encoder.neck.2.weight": (256, 256, 3, 3), "image_encoder.neck.3.weight": (256,), "image_encoder.neck.3.bias": (256,)}
    for i in range(depth):
        b = f"image_encoder.blocks.{i}."
        s.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                  b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                  b + "norm2.weight": (dim,), b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                  b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    s["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = (2, 128)
    for e in ("invalid_points", "point_embeddings", "bbox_top_left_embeddings", "bbox_bottom_right_embeddings"):
        s[f"prompt_encoder.{e}.weight"] = (1, 256)

    def attention(p, internal):
        for proj, (o, i) in {"q_proj": (internal, 256), "k_proj": (internal, 256), "v_proj": (internal, 256),
                             "out_proj": (256, internal)}.items():
            s[f"{p}.{proj}.weight"], s[f"{p}.{proj}.bias"] = (o, i), (o,)

    def mlp(p, widths):  # MLPBlock: layers.i.0 (Linear + act), then fc
        for i, (a, b) in enumerate(itertools.pairwise(widths[:-1])):
            s[f"{p}.layers.{i}.0.weight"], s[f"{p}.layers.{i}.0.bias"] = (b, a), (b,)
        s[f"{p}.fc.weight"], s[f"{p}.fc.bias"] = (widths[-1], widths[-2]), (widths[-1],)

    t = "mask_decoder.transformer."
    for i in range(2):
        attention(f"{t}layers.{i}.self_attn", 256)
        for a in ("cross_attn_token_to_image", "cross_attn_image_to_token"):
            attention(f"{t}layers.{i}.{a}", 128)
        mlp(f"{t}layers.{i}.mlp", [256, 2048, 256])
        for n in range(1, 5):
            s[f"{t}layers.{i}.norm{n}.weight"] = s[f"{t}layers.{i}.norm{n}.bias"] = (256,)
    attention(f"{t}final_attn_token_to_image", 128)
    s[f"{t}norm_final_attn.weight"] = s[f"{t}norm_final_attn.bias"] = (256,)
    s["mask_decoder.iou_token.weight"], s["mask_decoder.mask_tokens.weight"] = (1, 256), (4, 256)
    up = "mask_decoder.final_output_upscaling_layers."
    s.update({up + "0.0.weight": (256, 64, 2, 2), up + "0.0.bias": (64,), up + "0.1.weight": (64,), up + "0.1.bias": (64,),
              up + "1.0.weight": (64, 32, 2, 2), up + "1.0.bias": (32,)})
    for i in range(4):
        mlp(f"mask_decoder.output_hypernetworks_mlps.{i}", [256, 256, 256, 32])
    mlp("mask_decoder.iou_prediction_head", [256, 256, 256, 4])
    return s


@pytest.mark.parametrize("variant,dim,heads", [("s", 384, 6), ("ti", 192, 3)])
def test_efficientsam_has_the_official_keys(variant, dim, heads):
    with torch.device("meta"):
        ours = EfficientSamBackend(variant=variant).model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == official_efficientsam_shapes(dim, heads)


def test_efficientsam_official_file_loads_strictly(tmp_path):
    source = tiny("efficientsam")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    torch.save({"model": source.model.state_dict()}, tmp_path / "efficient_sam_toy.pt")  # the official layout
    loaded = EfficientSamBackend(variant="toy", checkpoint=str(tmp_path / "efficient_sam_toy.pt"))
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def sam2_release(tmp_path, arch: str, sam, fp16_sam: bool = True):
    """A release folder in the official EVF-SAM schema: BEiT-3 + projector fp32, SAM in fp16 (spec §9, T14)."""
    torch.manual_seed(0)
    model = EVFSAM(Beit3Encoder(size="tiny"), sam)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    state = {k: (v.half() if fp16_sam and k.startswith("visual_model.") else v.float()).contiguous()
             for k, v in to_official(model.state_dict()).items()}
    from safetensors.torch import save_file

    folder = tmp_path / "release"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "mm_extractor_scale": "tiny", "sam_scale": "toy",
                                                    "hidden_size": model.encoder.out_dim, "out_dim": 256}))
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, folder / SPM_FILENAME)
    return model, folder


@pytest.mark.parametrize("arch,sam,name", [
    ("EvfSam2Model", lambda: Sam2Backend(variant="toy", version="2.0"), "sam2.0_toy"),
    ("EvfSam2Model", lambda: Sam2Backend(variant="toy", version="2.1"), "sam2.1_toy"),  # detected by its keys
    ("EvfEffiSamModel", lambda: EfficientSamBackend(variant="toy"), "efficientsam_toy"),
])
def test_official_release_loads_strictly_with_mixed_dtypes(tmp_path, arch, sam, name):
    model, folder = sam2_release(tmp_path, arch, sam())
    loaded = EVFSAM.from_pretrained(folder)
    assert loaded.sam.name == name
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == torch.float32
        tol = 2e-3 if k.startswith("sam.") else 0.0  # the SAM part went through fp16
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=k)


@pytest.mark.parametrize("sam,paper,trainable", [
    (lambda: EfficientSamBackend(variant="s"), 700e6, 677_939_168),
    (lambda: Sam1Backend(variant="vit_h"), 1.32e9, 677_939_424),
    # as experiments/ablations/tab5_beit3_l_sam2_l.yaml: SAM-2 entirely frozen
    (lambda: Sam2Backend(variant="large", train_prompt_encoder=False, train_mask_decoder=False), 898e6, 674_013_440),
])
def test_tab5_whole_model_parameter_counts(sam, paper, trainable):
    """Held parameters against the paper; trainable ones (docs/sam_backends.md) exactly: BEiT-3 without its
    mask_token, the projector, and what a text prompt reaches of the prompt encoder and mask decoder."""
    with torch.device("meta"):
        model = EVFSAM(Beit3Encoder(size="large"), sam())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(paper, rel=0.02)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


# -- experiment files -------------------------------------------------------------------------
TAB6 = {"tab6_decoder_only": (False, False, True), "tab6_encoder_only": (True, False, False),
        "tab6_encoder_decoder": (True, False, True), "tab6_all": (True, True, True)}
TAB5_SAM = {"tab5_beit3_l_efficientsam_s": ("EfficientSamBackend", {"variant": "s"}),
            "tab5_beit3_l_sam_h": ("Sam1Backend", {"variant": "vit_h"}),
            "tab5_beit3_l_sam2_l": ("Sam2Backend", {"variant": "large", "version": "2.0"})}


@pytest.mark.parametrize("row", [*TAB6, *TAB5_SAM])
def test_tab5_tab6_rows_set_their_paper_row(row):
    """tests/test_experiments.py checks that every row resolves on base.yaml and trains; here: what each row means."""
    import yaml

    base = yaml.safe_load(Path("experiments/base.yaml").read_text())["model"]["model"]
    net = yaml.safe_load(Path(f"experiments/ablations/{row}.yaml").read_text())["model"]["model"]
    sam = net["sam"]
    if row in TAB6:  # only the three switches change (a switch the base already sets is not restated)
        assert set(net) <= {"train_encoder", "sam"} and set(sam) == {"init_args"}
        flags = (net.get("train_encoder", base["train_encoder"]), sam["init_args"]["train_prompt_encoder"],
                 sam["init_args"]["train_mask_decoder"])
        assert flags == TAB6[row]
    else:  # only the SAM plugin changes
        cls, args = TAB5_SAM[row]
        class_path = sam.get("class_path", base["sam"]["class_path"])
        init_args = {**(base["sam"]["init_args"] if class_path == base["sam"]["class_path"] else {}), **sam["init_args"]}
        assert set(net) == {"sam"} and class_path == f"evf.sam.{cls}"
        assert {k: init_args[k] for k in args} == args
