"""The plugin contracts as plain functions: the contract test modules parametrise them over every registered
plugin, and tests/test_presets.py runs them on a plugin registered inside a test (test modules never import
each other)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import evf
from evf.encoders import ENCODERS
from evf.model import EVFSAM
from evf.sam import SAM_BACKENDS

TEXTS = ["the red square on the left", "circle", "the largest blue triangle next to the small green star"]
TOL = 1e-5


def cases():
    out = []
    for name in ENCODERS:
        cls = ENCODERS.get(name).cls
        for mode in cls.MODES:
            for feature in cls.FEATURES.get(mode, (None,)):
                out.append(pytest.param(name, mode, feature, id=f"{name}-{mode}" + (f"-{feature}" if feature else "")))
    return out


def build(name: str, mode: str, feature: str | None):
    torch.manual_seed(0)
    kwargs = {"mode": mode} | ({"feature": feature} if feature else {})
    return ENCODERS.create(name, tiny=True, **kwargs)


def images(encoder, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    view = encoder.image_view
    return torch.stack([view(rng.integers(0, 256, size=(40 + 7 * i, 52, 3), dtype=np.uint8)) for i in range(n)])


def tokens(encoder, texts):
    t = encoder.tokenizer(texts)
    return t["input_ids"], t["padding_mask"]


def run(encoder, imgs, ids, pad):
    with torch.no_grad():
        return encoder(imgs, ids, pad)


@contextlib.contextmanager
def token_tables(encoder, ids: torch.Tensor):
    """Yields the list of embedding tables that forward calls inside the block index with ``ids``: found by
    running the encoder, so no plugin's parameter names are listed here."""
    found = []

    def record(module, args, _):
        if args and torch.is_tensor(args[0]) and args[0].dtype == ids.dtype and torch.equal(args[0], ids):
            found.append(module)

    hooks = [m.register_forward_hook(record) for m in encoder.modules() if isinstance(m, torch.nn.Embedding)]
    try:
        yield found
    finally:
        for hook in hooks:
            hook.remove()


def check_inputs_reach_the_feature(enc, mode: str) -> set[str]:
    """One backward pass from the feature: the text tokens' embedding rows and (exactly when the mode uses the
    image) the image pixels get a gradient through the whole stack. Returns the parameters the gradient touched."""
    ids, pad = tokens(enc, TEXTS)
    imgs = images(enc, len(TEXTS)).requires_grad_(True)
    with token_tables(enc, ids) as tables:
        out = enc(imgs, ids, pad)
    (out * torch.randn_like(out)).sum().backward()
    assert tables, f"{type(enc).__name__}: no nn.Embedding was called on the token ids"
    assert any(t.weight.grad is not None and t.weight.grad[ids[~pad]].abs().sum() > 0 for t in tables), \
        "the feature's gradient must reach the embeddings of the text tokens"
    image_reached = imgs.grad is not None and bool(imgs.grad.abs().sum() > 0)
    assert image_reached == enc.uses_image, f"{mode}: image reaches the feature: {image_reached}, uses_image: {enc.uses_image}"
    return {n for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def check_encoder_gradients(name: str, mode: str, feature: str | None) -> None:
    enc = build(name, mode, feature).train()
    touched = check_inputs_reach_the_feature(enc, mode)
    named = dict(enc.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == set(enc.used_parameters())  # the rest starts frozen
    # plain DDP stops on a trainable parameter without a gradient: there must be none
    assert {n for n, p in named.items() if p.grad is not None} == set(enc.used_parameters())
    assert touched <= set(enc.used_parameters()), f"parameters run but not counted: {sorted(touched - set(enc.used_parameters()))[:3]}"


def check_backend_contract(name: str, rgb_image: np.ndarray) -> None:
    torch.manual_seed(0)
    sam = SAM_BACKENDS.create(name, tiny=True).eval()
    image, input_size = sam.image_view(rgb_image)
    assert image.shape == (3, sam.image_size, sam.image_size) and image.dtype == torch.float32
    assert all(0 < s <= sam.image_size for s in input_size)
    emb = sam.embed_images(torch.stack([image, image.flip(-1)]))
    assert emb.shape[0] == 2 and not emb.requires_grad
    tokens = torch.randn(3, 1, sam.prompt_dim)
    logits, iou = sam.decode(emb[:2], tokens[:2])
    assert logits.dim() == 4 and logits.shape[:2] == (2, 1) and iou.shape == (2, 1)
    # N prompts on ONE embedding == each prompt with its own copy of that embedding
    shared, _ = sam.decode(emb[:1], tokens)
    paired, _ = sam.decode(emb[:1].expand(3, *emb.shape[1:]).contiguous(), tokens)
    torch.testing.assert_close(shared, paired, atol=1e-5, rtol=1e-5)
    full = sam.postprocess(logits[0, 0], input_size, rgb_image.shape[:2])
    assert full.shape == rgb_image.shape[:2] and full.dtype == torch.float32


def text_prompted_loss(model: EVFSAM) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 9 * i, 52, 3), dtype=np.uint8) for i in range(2)]
    masks = [rng.random(im.shape[:2]) > 0.5 for im in images]
    pre = model.preprocessor()
    batch = pre.collate([pre({"image": im, "text": t, "mask": m})
                         for im, t, m in zip(images, ["the red circle", "the blue square on the left"], masks)])
    return model.loss(model(batch), batch["masks"])["loss"]


def check_trainable_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = evf.create_model(name).train()
    text_prompted_loss(model).backward()
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert trainable == with_grad, f"trainable without gradient: {sorted(trainable - with_grad)[:4]}"
    # nothing a text prompt reaches was frozen on top of the switches (all on here) and the image encoder
    assert {n for n in named if n.startswith("encoder.")} & trainable == {f"encoder.{n}" for n in model.encoder.used_parameters()}
    assert {n for n in trainable if n.startswith("projector.")} == {n for n in named if n.startswith("projector.")}
    frozen_sam = {n for n, p in model.sam.named_parameters() if not p.requires_grad and model.sam.reached_by_text(n)}
    in_modules = {id(p) for m in model.sam.trainable_modules().values() for p in m.parameters()}
    assert not any(id(p) in in_modules for n, p in model.sam.named_parameters() if n in frozen_sam)
