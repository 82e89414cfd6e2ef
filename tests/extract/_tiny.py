"""Tiny randomly initialised models (and a tokenizer) for extraction tests; no downloads."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from repalign.data.synthetic import VOCABULARY

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer(tmp: Path) -> BertTokenizerFast:
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL, *VOCABULARY, "the", "cat", "sat"]) + "\n")
    return BertTokenizerFast(str(vocab))


def tiny_bert(vocab_size: int, layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False).eval()


def tiny_vit(depth: int = 2, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=0)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def save_tiny_bert_dir(tmp: Path, layers: int = 2) -> Path:
    """A local transformers directory (config, weights, tokenizer) like a downloaded model."""
    out = tmp / "tiny-bert"
    tok = tiny_tokenizer(tmp)
    tiny_bert(len(tok), layers).save_pretrained(out)
    tok.save_pretrained(out)
    return out
