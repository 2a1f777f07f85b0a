"""Text tokenizers: BEiT-3's XLM-R sentencepiece tokenizer, read from a folder as the official code reads it.

All tokenizers return right-padded ``input_ids`` ``[B, L]`` and ``padding_mask`` ``[B, L]``
(True at padding), the padding mask derived from the pad id exactly as the official code does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evf.config_errors import ConfigError
from evf.errors import UserError, first_line
from evf.io import atomic_path, generated_dir, make_temp_sibling

if TYPE_CHECKING:
    import torch

SEMANTIC_TOKEN = "[semantic]"
SPM_FILENAME = "sentencepiece.bpe.model"
ADDED_TOKENS_FILENAME = "added_tokens.json"
TOKENIZER_CONFIG_FILENAME = "tokenizer_config.json"
XLMR_CLASSES = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast")


class TokenizerError(UserError, ValueError):
    """A tokenizer folder whose files cannot be read or belong to another tokenizer; names the file."""


def encode_prompt(text: str, tokenize: Callable[[str], list[int]], lowercase: bool, max_length: int | None) -> list[int]:
    """A prompt's ids as the official code makes them (stripped and lower-cased where the tokenizer wants it); one past
    ``max_length`` is cut, keeping its final ``</s>``, with a warning. Shared by ``XlmrTokenizer`` and the torch-free
    ONNX runner (``evf.deploy``), each with its own ``tokenize``."""
    text = text.strip().lower() if lowercase else text
    ids = tokenize(text)
    if max_length is not None and len(ids) > max_length:
        warnings.warn(f"prompt of {len(ids)} tokens truncated to {max_length}: {text[:40]!r}...", stacklevel=3)
        ids = ids[: max_length - 1] + [ids[-1]]
    return ids


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    import torch  # here, not at the top: the ONNX runner uses encode_prompt without torch

    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return {"input_ids": ids, "padding_mask": ids == pad_id}


def base_vocab_size(spm_file: str | os.PathLike) -> int:
    """XLM-R's id count before added tokens: 4 fairseq specials + the pieces (sp's unk/bos/eos folded
    onto the specials) + ``<mask>`` = pieces + 2 (64002 for BEiT-3's 64000 pieces)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_file)).get_piece_size() + 2


def write_semantic_token_file(folder: str | os.PathLike) -> Path:
    """Give a tokenizer folder the multitask release layout: ``added_tokens.json`` mapping ``[semantic]``
    to the first id after the base vocabulary. Our own training tokenizers use it; release folders never get it."""
    folder = Path(folder)
    path = folder / ADDED_TOKENS_FILENAME
    with atomic_path(path) as tmp:  # the toy folder is shared by concurrent processes
        tmp.write_text(json.dumps({SEMANTIC_TOKEN: base_vocab_size(folder / SPM_FILENAME)}) + "\n")
    return path


def check_tokenizer_class(folder: Path) -> None:
    """Refuse a folder whose ``tokenizer_config.json`` names another tokenizer: the official
    ``AutoTokenizer`` would build that one, so reading it as XLM-R would silently differ."""
    config = folder / TOKENIZER_CONFIG_FILENAME
    if not config.is_file():
        return
    try:
        name = json.loads(config.read_text()).get("tokenizer_class")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise TokenizerError(f"cannot read {config}: {type(exc).__name__}: {first_line(exc)}") from None
    if name is not None and name not in XLMR_CLASSES:
        raise TokenizerError(f"{config}: tokenizer_class {name!r} is not BEiT-3's; expected one of {list(XLMR_CLASSES)}")


class XlmrTokenizer:
    """XLM-R tokenizer over a folder holding ``sentencepiece.bpe.model`` (BEiT-3's ``beit3.spm``).

    A folder is read exactly as ``AutoTokenizer.from_pretrained(folder, use_fast=False)`` reads it: its
    ``added_tokens.json``, ``special_tokens_map.json`` and ``tokenizer_config.json`` decide the added tokens,
    and nothing is added here. So a multitask release folder maps ``[semantic]`` to one id (64002), a plain
    release folder splits it into ordinary pieces. A bare model file under another name (``beit3.spm``) is
    staged as a training tokenizer: it gets ``added_tokens.json`` with ``[semantic]``, as the multitask releases.
    ``max_length=None`` never truncates (as the official code); otherwise longer prompts are cut to
    ``max_length`` tokens, keeping ``</s>``, with a warning. Picklable, so it runs inside dataloader workers.
    """

    def __init__(self, path: str | os.PathLike, max_length: int | None = None, lowercase: bool = False):
        from transformers import XLMRobertaTokenizer

        path = Path(path)
        folder = path.parent if path.is_file() else path
        if path.is_file() and path.name != SPM_FILENAME:
            # transformers v5 ignores a bare vocab_file (it silently builds a 5-token vocab), so
            # stage the model under the file name from_pretrained looks for.
            folder = Path(tempfile.mkdtemp(prefix="evf-spm-"))  # noqa: TID251 - private staging, never published
            shutil.copy(path, folder / SPM_FILENAME)
            write_semantic_token_file(folder)
        if not (folder / SPM_FILENAME).is_file():
            raise FileNotFoundError(f"no {SPM_FILENAME} in {folder}")
        if max_length is not None and max_length < 2:
            raise ConfigError(f"max_length must leave room for <s> and </s> (>= 2), got {max_length}")
        check_tokenizer_class(folder)
        self.path = str(path)
        self.max_length = max_length
        self.lowercase = lowercase
        try:
            self.tok = XLMRobertaTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # noqa: BLE001 - sentencepiece and transformers raise many types on damaged files
            raise TokenizerError(f"cannot read the tokenizer in {folder}: {type(exc).__name__}: {first_line(exc, 200)}") from None
        if len(self.tok) <= 5:
            raise TokenizerError(f"tokenizer at {folder} has only {len(self.tok)} tokens: the sentencepiece model was not read")
        self.pad_id = self.tok.pad_token_id
        # The id of [semantic] where the folder makes it one token; None where it is split into pieces.
        self.semantic_id = self.tok.get_vocab().get(SEMANTIC_TOKEN)

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(text, lambda t: self.tok(t)["input_ids"], self.lowercase, self.max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return pad_sequences([self.encode(t) for t in texts], self.pad_id)


def train_sentencepiece(sentences: Iterable[str], vocab_size: int = 96, generated: str | os.PathLike | None = None) -> Path:
    """Train a small sentencepiece model (for tests and the synthetic dataset); returns its folder.

    Results are cached by a hash of the corpus so repeated runs reuse one file. Uses
    sentencepiece's default special ids (unk=0, bos=1, eos=2), which XLM-R's id mapping expects.
    """
    import sentencepiece as spm

    sentences = list(sentences)
    key = hashlib.sha1(("\n".join(sentences) + f"|{vocab_size}").encode()).hexdigest()[:16]
    root = Path(generated or generated_dir()) / "spm" / key
    if (root / SPM_FILENAME).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_sibling(root, folder=True)  # mkdtemp's 0700 would hide a shared cache from the group
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(tmp / "sentencepiece.bpe"), vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    try:
        os.replace(tmp, root)  # atomic publish; a concurrent winner is fine too
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# Words of the embedded synthetic datasets plus common referring-expression words; the toy
# tokenizer (tests, quickstart) is trained on them so no download is needed.
TOY_WORDS = (  # noqa: SIM905 - a sentence reads better than a 100-item list
    "the a an of on in to at and with next near between above below under over left right top bottom "
    "upper lower middle center centre leftmost rightmost topmost bottommost first second third one two three "
    "largest smallest biggest big small large tiny medium shape object thing all "
    "red green blue yellow purple orange cyan magenta white black gray grey pink brown "
    "square squares circle circles triangle triangles ring rings cross crosses diamond diamonds star stars "
    "background stripes dots man woman person people dog cat car bus tree sky road arm leg hand head"
).split()


def toy_tokenizer_dir(generated: str | os.PathLike | None = None) -> Path:
    """Folder of the built-in toy tokenizer (trained once, then cached), laid out as a multitask release:
    the sentencepiece model plus ``added_tokens.json`` making ``[semantic]`` one token."""
    words = list(TOY_WORDS)
    sentences = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    sentences += [w for w in words] * 4
    folder = train_sentencepiece(sentences, vocab_size=160, generated=generated)
    if not (folder / ADDED_TOKENS_FILENAME).is_file():  # caches made before the file existed get it now
        write_semantic_token_file(folder)
    return folder
