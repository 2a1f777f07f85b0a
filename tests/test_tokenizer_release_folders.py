"""Release-folder tokenizers follow the folder's own files, as the official ``AutoTokenizer`` path does
(spec §6, T11, T17, T18); prompts are cut only at the text position table of the BEiT-3 in use."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer

from evf.encoders import Beit3Encoder
from evf.encoders.beit3_model import BEIT3_CONFIGS, POSITION_OFFSET
from evf.tokenizer import SEMANTIC_TOKEN, SPM_FILENAME, TOY_WORDS, XlmrTokenizer, toy_tokenizer_dir

# The files every EVF-SAM hub folder has next to the sentencepiece model (written by transformers 4.x).
TOKENIZER_CONFIG = {
    "bos_token": "<s>", "clean_up_tokenization_spaces": True, "cls_token": "<s>", "eos_token": "</s>",
    "mask_token": {"__type": "AddedToken", "content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False,
                   "single_word": False},
    "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "sep_token": "</s>",
    "sp_model_kwargs": {}, "tokenizer_class": "XLMRobertaTokenizer", "unk_token": "<unk>",
}
SPECIAL_TOKENS_MAP = {
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "sep_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False},
}
FIXED_TEXTS = ["[semantic] sky", "[SEMANTIC]", "[semantic]", "a [semantic]sky", "  [semantic]   red  circle ",
               "the red circle", "naïve café ｆｕｌｌ ① 日本 🙂 Ünïcödé", "", "<mask> red"]


def base_vocab_size(spm_file: Path) -> int:
    """<s> <pad> </s> <unk>, the pieces (sp's own unk/bos/eos folded onto those), <mask>: 64002 for BEiT-3."""
    return spm.SentencePieceProcessor(model_file=str(spm_file)).get_piece_size() + 2


def text_limit(size: str) -> int:
    return BEIT3_CONFIGS[size].max_text_positions - POSITION_OFFSET


def write_folder(folder: Path, multitask: bool) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, folder / SPM_FILENAME)
    (folder / "config.json").write_text(json.dumps({"architectures": ["EvfSamModel"], "model_type": "evf"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP))
    if multitask:  # as evf-sam-multitask: "[semantic]" is the first id after the base vocabulary
        (folder / "added_tokens.json").write_text(json.dumps({SEMANTIC_TOKEN: base_vocab_size(folder / SPM_FILENAME)}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return {"plain": write_folder(root / "evf-sam", False), "multitask": write_folder(root / "evf-sam-multitask", True)}


def official(folder: Path):
    """The official code's tokenizer (inference.py / eval.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(str(folder), padding_side="right", use_fast=False)


def long_prompt(theirs, n_tokens: int, prefix: str = "") -> str:
    words = list(TOY_WORDS) * 10
    for n in range(n_tokens):
        text = " ".join([prefix, *words[:n]]) if prefix else " ".join(words[:n])
        if len(theirs(text)["input_ids"]) == n_tokens:
            return text
    raise AssertionError(f"no prompt of exactly {n_tokens} tokens")


@pytest.mark.parametrize("flavour", ["plain", "multitask"])
def test_ids_equal_the_official_tokenizer(folders, flavour):
    theirs = official(folders[flavour])
    ours = XlmrTokenizer(folders[flavour])
    assert len(ours) == len(theirs)
    texts = [*FIXED_TEXTS, long_prompt(theirs, 300), long_prompt(theirs, 300, SEMANTIC_TOKEN)]
    expected = [theirs(text)["input_ids"] for text in texts]
    assert len(expected[-1]) == len(expected[-2]) == 300
    for text, ids in zip(texts, expected):
        assert ours.encode(text) == ids, text  # nothing truncated: no limit given, as the official code
    batch = ours(texts)
    assert batch["input_ids"].shape == (len(texts), max(map(len, expected)))
    assert torch.equal(batch["padding_mask"], batch["input_ids"] == theirs.pad_token_id)


def test_plain_folder_splits_semantic_multitask_keeps_one_id(folders):
    plain, multi = XlmrTokenizer(folders["plain"]), XlmrTokenizer(folders["multitask"])
    base = base_vocab_size(folders["plain"] / SPM_FILENAME)
    assert len(plain) == base and len(multi) == base + 1  # 64002 / 64003 with BEiT-3's vocabulary
    assert plain.semantic_id is None and multi.semantic_id == base
    assert len(plain.encode(SEMANTIC_TOKEN)) > 4 and base not in plain.encode("[semantic] sky")  # T17
    assert multi.encode(SEMANTIC_TOKEN) == [0, base, 2]  # T11
    assert multi.encode("[semantic] sky") == [0, base, *plain.encode("sky")[1:]]
    assert base not in multi.encode("[SEMANTIC]")  # case matters, as in the official tokenizer
    assert multi.encode("sky") == plain.encode("sky")


def test_our_training_tokenizers_keep_one_semantic_token(tmp_path):
    toy = XlmrTokenizer(toy_tokenizer_dir())  # the layout of a multitask release, through its own added_tokens.json
    assert (toy_tokenizer_dir() / "added_tokens.json").is_file()
    assert toy.semantic_id == base_vocab_size(toy_tokenizer_dir() / SPM_FILENAME) == len(toy) - 1
    bare = tmp_path / "beit3.spm"  # experiments/base.yaml trains from the bare BEiT-3 model file
    shutil.copy(toy_tokenizer_dir() / SPM_FILENAME, bare)
    assert XlmrTokenizer(bare).encode("[semantic] red circle") == toy.encode("[semantic] red circle")


@pytest.mark.parametrize("size", sorted(BEIT3_CONFIGS))
def test_text_limit_is_the_position_table_minus_the_offset(size):
    assert BEIT3_CONFIGS[size].max_text_tokens == text_limit(size)
    if size in ("base", "large"):
        assert text_limit(size) == 1022  # T18: the official code never cuts below this


def test_long_prompt_is_cut_only_at_the_model_limit(folders):
    theirs = official(folders["multitask"])
    prompt = long_prompt(theirs, 300, SEMANTIC_TOKEN)
    expected = theirs(prompt)["input_ids"]
    for size in ("base", "large"):
        with torch.device("meta"):  # the real sizes, without allocating their weights
            encoder = Beit3Encoder(size=size, mode="text", tokenizer=str(folders["multitask"]))
        assert encoder.max_text_length == encoder.tokenizer.max_length == text_limit(size) == 1022
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no truncation warning below the limit
            assert encoder.tokenizer.encode(prompt) == expected
    encoder = Beit3Encoder(size="tiny", mode="text", tokenizer=str(folders["multitask"]))
    table_rows = encoder.beit3.encoder.embed_positions.B.num_embeddings
    limit = table_rows - POSITION_OFFSET
    assert encoder.max_text_length == encoder.tokenizer.max_length == limit < 300
    with pytest.warns(UserWarning, match=f"prompt of 300 tokens truncated to {limit}"):
        batch = encoder.tokenizer([prompt])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == limit and ids[:-1] == expected[: limit - 1] and ids[-1] == 2  # </s> kept
    with torch.no_grad():
        assert encoder(None, **batch).shape == (1, encoder.out_dim)  # the model embeds every kept token


def test_default_max_text_length_is_the_limit_and_smaller_values_stay():
    assert Beit3Encoder(size="tiny").max_text_length == text_limit("tiny")
    assert Beit3Encoder(size="tiny", max_text_length=16).tokenizer.max_length == 16
    assert Beit3Encoder(size="tiny", max_text_length=10_000).max_text_length == text_limit("tiny")


def test_foreign_tokenizer_class_is_a_clear_error(tmp_path):
    folder = write_folder(tmp_path / "bert", False)
    (folder / "tokenizer_config.json").write_text(json.dumps({**TOKENIZER_CONFIG, "tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ValueError, match="tokenizer_config.json: tokenizer_class 'BertTokenizer'"):
        XlmrTokenizer(folder)
