"""Text tokenizers: BEiT-3's XLM-R sentencepiece tokenizer with the ``[semantic]`` token.

All tokenizers return right-padded ``input_ids`` ``[B, L]`` and ``padding_mask`` ``[B, L]``
(True at padding), the padding mask derived from the pad id exactly as the official code does.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

SEMANTIC_TOKEN = "[semantic]"
SPM_FILENAME = "sentencepiece.bpe.model"


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return {"input_ids": ids, "padding_mask": ids == pad_id}


class XlmrTokenizer:
    """XLM-R tokenizer over a folder holding ``sentencepiece.bpe.model`` (BEiT-3's ``beit3.spm``).

    ``[semantic]`` is added as one special token (id 64002 with the real vocabulary).
    Prompts longer than ``max_length`` tokens are truncated (keeping ``</s>``) with a warning.
    Picklable, so it runs inside dataloader workers.
    """

    def __init__(self, path: str | os.PathLike, max_length: int = 64, lowercase: bool = False):
        from transformers import XLMRobertaTokenizer

        path = Path(path)
        folder = path.parent if path.is_file() else path
        if path.is_file() and path.name != SPM_FILENAME:
            # transformers v5 ignores a bare vocab_file (it silently builds a 5-token vocab), so
            # stage the model under the file name from_pretrained looks for.
            folder = Path(tempfile.mkdtemp(prefix="evf-spm-"))
            shutil.copy(path, folder / SPM_FILENAME)
        if not (folder / SPM_FILENAME).is_file():
            raise FileNotFoundError(f"no {SPM_FILENAME} in {folder}")
        self.path = str(path)
        self.max_length = max_length
        self.lowercase = lowercase
        self.tok = XLMRobertaTokenizer.from_pretrained(str(folder))
        self.tok.add_special_tokens({"additional_special_tokens": [SEMANTIC_TOKEN]})
        if len(self.tok) <= 5:
            raise ValueError(f"tokenizer at {folder} has only {len(self.tok)} tokens: the sentencepiece model was not read")
        self.pad_id = self.tok.pad_token_id
        self.semantic_id = self.tok.convert_tokens_to_ids(SEMANTIC_TOKEN)

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        text = text.strip().lower() if self.lowercase else text
        ids = self.tok(text)["input_ids"]
        if len(ids) > self.max_length:
            warnings.warn(f"prompt of {len(ids)} tokens truncated to {self.max_length}: {text[:40]!r}...", stacklevel=2)
            ids = ids[: self.max_length - 1] + [ids[-1]]
        return ids

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return pad_sequences([self.encode(t) for t in texts], self.pad_id)


def train_sentencepiece(sentences: Iterable[str], vocab_size: int = 96, cache_dir: str | os.PathLike | None = None) -> Path:
    """Train a small sentencepiece model (for tests and the synthetic dataset); returns its folder.

    Results are cached by a hash of the corpus so repeated runs reuse one file. Uses
    sentencepiece's default special ids (unk=0, bos=1, eos=2), which XLM-R's id mapping expects.
    """
    import sentencepiece as spm

    sentences = list(sentences)
    key = hashlib.sha1(("\n".join(sentences) + f"|{vocab_size}").encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("EVF_CACHE", Path.home() / ".cache" / "evf")) / "spm" / key
    if (root / SPM_FILENAME).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent))
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


def toy_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the built-in toy sentencepiece model (trained once, then cached)."""
    words = list(TOY_WORDS)
    sentences = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    sentences += [w for w in words] * 4
    return train_sentencepiece(sentences, vocab_size=160, cache_dir=cache_dir)
