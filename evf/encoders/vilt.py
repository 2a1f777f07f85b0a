"""ViLT (transformers) as a multimodal-encoder plugin: text-only, late concat or early fusion (paper Tab.4/5).

ViLT is one single-stream transformer: ``[text tokens (CLS first), image tokens (CLS first)]``,
a modality-type embedding per token, then the pooler (dense + tanh) on the first token.

* ``early``: text and image tokens in one pass (as ViLT was pre-trained); feature = pooled text CLS.
* ``text``: the text tokens alone through the same transformer; feature = pooled text CLS.
* ``late``: text alone and image alone through the same weights, pooled CLS of each, concatenated
  (text ‖ image), so neither half sees the other modality.

Images are stretched to a fixed ``config.image_size`` square (384 for vilt-b32-mlm; ViLT's own
processor keeps the aspect ratio with a 384 short side), so every image has the same 12x12 patch
grid: batches need no pixel masks and the learned position table is used as trained, without
interpolation or ViLT's random patch sampling (which would make eval non-deterministic).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch

from evf.checkpoint import WEIGHT_FILES, CheckpointError, load_into, load_state_dict, select_prefix
from evf.config_errors import ConfigError
from evf.encoders.base import ENCODERS, MultimodalEncoder
from evf.io import generated_dir
from evf.tokenizer import TOY_WORDS, pad_sequences
from evf.transforms import StretchView

TINY_VILT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "image_size": 32, "patch_size": 8, "vocab_size": 512}
CHECKPOINT_PREFIXES = ("vilt.", "")  # ViltForMaskedLM & co. keep the backbone under "vilt."; the heads are dropped
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TEXT, IMAGE = 0, 1  # ViLT's modality-type ids


def toy_vocab_dir(generated: str | os.PathLike | None = None) -> Path:
    """Folder with a small WordPiece ``vocab.txt`` (BERT specials + the toy words) for tests."""
    root = Path(generated or generated_dir()) / "vilt-toy-vocab"
    vocab = root / "vocab.txt"
    if not vocab.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"vocab.txt.{os.getpid()}"
        tmp.write_text("\n".join([*BERT_SPECIALS, *sorted(set(TOY_WORDS))]) + "\n")
        os.replace(tmp, vocab)
    return root


class ViltTokenizer:
    """BERT WordPiece tokenizer (uncased, ``[CLS] text [SEP]``) in our contract, truncated to ViLT's positions."""

    def __init__(self, path: str | os.PathLike, max_length: int = 40):
        from transformers import BertTokenizer

        if not (Path(path) / "vocab.txt").is_file():
            raise FileNotFoundError(f"no vocab.txt in {path} (the ViLT folder holds BERT's vocabulary)")
        self.path = str(path)
        self.max_length = max_length
        self.tok = BertTokenizer.from_pretrained(self.path)
        self.pad_id = self.tok.pad_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return pad_sequences(ids, self.pad_id)


@ENCODERS.register("vilt", tiny={"size": "tiny"})
class ViltEncoder(MultimodalEncoder):
    """ViLT backbone (``transformers.ViltModel``).

    Args:
        pretrained: folder of ``dandelin/vilt-b32-mlm`` (``config.json``, ``model.safetensors`` or
            ``pytorch_model.bin``, ``vocab.txt``); every backbone weight must be present (strict).
        mode: ``early``, ``late`` or ``text`` (see the module docstring).
        size: ``base`` (vilt-b32 architecture) or ``tiny`` when ``pretrained`` is not given.
        tokenizer: folder with ``vocab.txt``; defaults to ``pretrained``, else a toy vocabulary.
        max_text_length: longest token sequence kept (ViLT has 40 text positions).
    """

    has_joint_pass = True

    def __init__(self, pretrained: str | None = None, mode: str = "early", size: str = "base",
                 tokenizer: str | None = None, max_text_length: int = 40):
        super().__init__()
        from transformers import ViltConfig, ViltModel

        self.mode = self.check_mode(mode)
        if pretrained:
            if not Path(pretrained, "config.json").is_file():
                raise CheckpointError(f"no config.json in {pretrained}: not a ViLT folder")
            config = ViltConfig.from_pretrained(pretrained)
            weights = next((Path(pretrained, f) for f in WEIGHT_FILES if Path(pretrained, f).is_file()), None)
            if weights is None:
                raise CheckpointError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {pretrained}")
        elif size in ("base", "tiny"):
            config = ViltConfig(**(TINY_VILT if size == "tiny" else {}))
        else:
            raise ConfigError(f"unknown ViLT size {size!r}; choose from ['base', 'tiny']")
        self.vilt = ViltModel(config)
        if pretrained:
            load_into(self.vilt, select_prefix(load_state_dict(weights), CHECKPOINT_PREFIXES), str(weights))
        self.tokenizer_path = tokenizer or pretrained
        self.max_text_length = min(max_text_length, config.max_position_embeddings)
        self.image_size = config.image_size
        self.out_dim = config.hidden_size * (2 if mode == "late" else 1)
        self.requires_grad_(True)  # text mode: the image embeddings stay frozen

    @property
    def image_view(self) -> StretchView:
        return StretchView(self.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @cached_property
    def tokenizer(self) -> ViltTokenizer:
        tok = ViltTokenizer(self.tokenizer_path or toy_vocab_dir(), self.max_text_length)
        if len(tok) > self.vilt.config.vocab_size:
            raise ConfigError(f"tokenizer has {len(tok)} tokens but ViLT embeds only {self.vilt.config.vocab_size}")
        return tok

    def uses_parameter(self, name: str) -> bool:
        image_side = name.startswith(("vilt.embeddings.patch_embeddings.", "vilt.embeddings.cls_token",
                                      "vilt.embeddings.position_embeddings"))
        return self.uses_image or not image_side

    # -- token streams ------------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S] -> [B, 1+N, D]``: patches + image CLS + position table (no modality embedding yet)."""
        emb = self.vilt.embeddings
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ViLT view must be {self.image_size}x{self.image_size}, got {tuple(images.shape[-2:])}")
        x = emb.patch_embeddings(images).flatten(2).transpose(1, 2)
        x = torch.cat([emb.cls_token.expand(len(x), -1, -1), x], dim=1)
        return emb.dropout(x + emb.position_embeddings)

    def typed(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        ids = torch.full(x.shape[:2], modality, dtype=torch.long, device=x.device)
        return x + self.vilt.embeddings.token_type_embeddings(ids)

    def pooled_alone(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One modality's tokens ``[B, N, D]`` (``keep`` ``[B, N]`` 1 = real token) -> pooled first token ``[B, D]``."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.vilt.config, inputs_embeds=x, attention_mask=keep)
        hidden = self.vilt.encoder(x, attention_mask=mask)[0]
        return self.vilt.pooler(self.vilt.layernorm(hidden))

    # -- joint pass hooks (pre-training objectives) ---------------------------------------------
    def joint_tokens(self, images: torch.Tensor, input_ids: torch.Tensor,
                     padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text token outputs, pooled text [CLS]) of one single-stream pass over text and image tokens."""
        image = self.image_tokens(images)
        out = self.vilt(input_ids=input_ids, attention_mask=(~padding_mask).long(), image_embeds=image,
                        pixel_mask=torch.ones(image.shape[:2], dtype=torch.long, device=image.device))
        return out.last_hidden_state[:, : input_ids.shape[1]], out.pooler_output

    @property
    def hidden_size(self) -> int:
        return self.vilt.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.vilt.config.vocab_size

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.tok.mask_token_id  # BERT's own [MASK]

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """images ``[B,3,S,S]``, input_ids/padding_mask ``[B,L]`` (True = pad) -> ``[B, out_dim]``."""
        keep_text = (~padding_mask).long()
        if self.mode == "early":
            image = self.image_tokens(images)
            out = self.vilt(input_ids=input_ids, attention_mask=keep_text, image_embeds=image,
                            pixel_mask=torch.ones(image.shape[:2], dtype=torch.long, device=image.device))
            return out.pooler_output
        text = self.typed(self.vilt.embeddings.text_embeddings(input_ids=input_ids), TEXT)
        text_feature = self.pooled_alone(text, keep_text)
        if self.mode == "text":
            return text_feature
        image = self.typed(self.image_tokens(images), IMAGE)
        image_feature = self.pooled_alone(image, torch.ones(image.shape[:2], dtype=torch.long, device=image.device))
        return torch.cat([text_feature, image_feature], dim=-1)
