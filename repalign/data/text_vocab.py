"""Tokenizers for ViLBERT's text stream, built without any download.

The ``tiny`` preset reads captions of the embedded synthetic dataset, so its
tokenizer is a BERT-style WordPiece over :data:`repalign.data.synthetic.VOCABULARY`
plus the five BERT special tokens. A text tower loaded from a local pretrained
directory uses that directory's own tokenizer (:func:`load_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from repalign.data.synthetic import VOCABULARY

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def synthetic_tokenizer(words: Iterable[str] = VOCABULARY) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer whose vocabulary is ``words`` plus the specials.

    Ids are stable: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then ``words``
    in order (duplicates dropped). Text is lower-cased and split on whitespace and
    punctuation like BERT; unknown words map to ``[UNK]``.
    """
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def load_tokenizer(source: str | Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer for a text tower: ``None`` or ``"synthetic"`` gives
    :func:`synthetic_tokenizer`, a local directory gives its own tokenizer (no hub access)."""
    if source is None or str(source) == "synthetic":
        return synthetic_tokenizer()
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path} does not exist; pass a local model directory "
            "(with tokenizer files) or 'synthetic'"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
