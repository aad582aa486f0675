"""Build tiny, randomly initialised classifier checkpoints for fast tests.

The encoder uses the tokenizer files of the default MiniLM base model, so it reads
behaviour text exactly as the real model does. The decoder is a GPT-2 classifier
with a small word-level tokenizer that, like GPT-2's, has no pad token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from stream_detector.scoring import default_base_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
LABELS = {0: "legitimate", 1: "fraud"}

_DECODER_WORDS = (
    "events over an instant a few seconds under minute minutes page views of pages revisits "
    "median gap gaps regular irregular referrer missing errors agent chrome on windows searches "
    "distinct no results orders value low medium high declined approved device shared by accounts "
    "ip recent view home order search one two three four five six seven eight nine ten . , ; :"
).split()


def build_tiny_bert(folder: Path, *, seed: int = 0, as_base: bool = False) -> Path:
    """Save a two-layer BERT classifier with the MiniLM tokenizer into ``folder``.

    Args:
        folder: where to write the checkpoint; created if missing.
        seed: seed of the random weights.
        as_base: write no label names, like a base encoder that was never fine-tuned.

    Returns:
        ``folder``.
    """
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    config.num_labels = 2
    if not as_base:
        config.id2label = dict(LABELS)
        config.label2id = {name: index for index, name in LABELS.items()}
    model = BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)

    base = default_base_model()
    for name in TOKENIZER_FILES:
        shutil.copyfile(base / name, folder / name)
    return folder


def build_tiny_gpt2(folder: Path, *, seed: int = 0) -> Path:
    """Save a two-layer GPT-2 classifier whose tokenizer and config have no pad token.

    Returns:
        ``folder``.
    """
    torch.manual_seed(seed)
    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for word in _DECODER_WORDS:
        vocab.setdefault(word, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]")

    config = GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    config.num_labels = 2
    model = GPT2ForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
