"""Tiny Qwen2 models and a character-level tokenizer, built in-process for tests (no model hub).

The tokenizer's vocabulary is printable ASCII plus newline, spelled in the byte-level alphabet that Qwen2's
tokenizer uses (space is 'Ġ', newline 'Ċ'): transformers 5 loads `Qwen2Tokenizer` for any Qwen2 folder, and a
naively saved character vocabulary then silently loses spaces and newlines.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (used by Qwen2): printable bytes map to themselves, the other bytes to
    code points from 256 up, in order (so space, byte 32, becomes 'Ġ' = chr(256 + 32) and newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def save_char_tokenizer(path: Path) -> int:
    """Write a Qwen2-style tokenizer with one token per printable ASCII character; returns the vocabulary size."""
    byte_to_char = bytes_to_unicode()
    chars = [byte_to_char[b] for b in [10, *range(32, 127)]]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[EOS] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": EOS, "pad_token": EOS, "unk_token": None,
        "bos_token": None, "add_prefix_space": False, "model_max_length": 4096,
        "added_tokens_decoder": {str(vocab[EOS]): {"content": EOS, "special": True, "lstrip": False,
                                                   "rstrip": False, "normalized": False, "single_word": False}},
    }))
    return len(vocab)


def save_tiny_qwen2(path: Path, *, tie_word_embeddings: bool, seed: int = 0, hidden: int = 128, layers: int = 2) -> Path:
    """A random tiny Qwen2 (head_dim 64: vLLM's CPU attention rejects 16) with the char tokenizer, saved to `path`."""
    vocab_size = save_char_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    config = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=tie_word_embeddings, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id, bos_token_id=None, torch_dtype="float32")
    assert vocab_size <= config.vocab_size
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # larger than the default 0.02 init, so that the tiny model's distributions are not flat
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(path)
    return path
