"""MLM 80/10/10 masking, patch masks, the synthetic tokenizer and the collators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.data.masking import (
    IGNORE_INDEX,
    mask_tokens,
    max_predictions,
    prediction_positions,
    random_patch_mask,
)
from repalign.data.synthetic import VOCABULARY
from repalign.data.text_vocab import SPECIAL_TOKENS
from repalign.train.collate import ClassifierCollator, PretrainCollator


def test_mlm_masking_statistics():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(5, 20, size=(2000, 40)))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    random_ids = torch.arange(5, 20)
    masked, labels = mask_tokens(
        ids, special, mask_token_id=4, random_token_ids=random_ids, rng=rng, probability=0.15
    )
    picked = labels != IGNORE_INDEX
    assert not picked[special].any()
    assert abs(picked[~special].float().mean().item() - 0.15) < 0.005
    torch.testing.assert_close(labels[picked], ids[picked])
    assert (masked[~picked] == ids[~picked]).all()
    n = picked.sum().item()
    to_mask = (masked[picked] == 4).sum().item() / n
    changed = ((masked[picked] != 4) & (masked[picked] != ids[picked])).sum().item() / n
    kept = (masked[picked] == ids[picked]).sum().item() / n
    # a random replacement equals the original 1 time in 15
    assert abs(to_mask - 0.8) < 0.01
    assert abs(changed - 0.1 * 14 / 15) < 0.01
    assert abs(kept - (0.1 + 0.1 / 15)) < 0.01
    assert masked[picked & (masked != 4)].ge(5).all()  # random tokens are never special


def test_mlm_masking_rejects_bad_probability():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(
            ids,
            torch.zeros_like(ids, dtype=torch.bool),
            mask_token_id=4,
            random_token_ids=torch.arange(5, 9),
            rng=np.random.default_rng(0),
            probability=0.0,
        )


def test_patch_mask_has_fixed_count_and_matching_index():
    mask, index = random_patch_mask(8, 16, probability=0.25, rng=np.random.default_rng(1))
    assert mask.shape == (8, 16) and index.shape == (8, 4)
    assert (mask.sum(1) == 4).all()
    assert mask.gather(1, index).all()
    assert (index.diff(dim=1) > 0).all()


def test_synthetic_tokenizer_covers_the_vocabulary(tokenizer):
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    enc = tokenizer("a red circle left of a blue square")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(VOCABULARY)


def test_pretrain_collator_batch(tokenizer, samples32):
    tasks = ("mlm", "mim", "ap", "itc")
    collate = PretrainCollator(tokenizer, tasks=tasks, image_size=32, patch_size=8, seed=0)
    torch.manual_seed(0)
    batch = collate(samples32[:8])
    torch.manual_seed(0)
    again = collate(samples32[:8])
    for key in batch:  # same torch RNG state and seed -> same batch
        torch.testing.assert_close(batch[key], again[key])
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    assert batch["neg_input_ids"].shape == batch["input_ids"].shape
    # hard negatives differ from their positive caption in exactly one word (or relation)
    for pos, neg in zip(batch["input_ids"], batch["neg_input_ids"], strict=True):
        assert not torch.equal(pos, neg)
    labels = batch["mlm_labels"]
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (labels[:, 0] == IGNORE_INDEX).all()  # [CLS] is never masked
    assert batch["patch_mask"].shape == (8, 16) and batch["mim_index"].shape == (8, 4)
    assert batch["mlm_attribute"].sum() <= (labels != IGNORE_INDEX).sum()


def test_pretrain_collator_errors(tokenizer):
    with pytest.raises(ValueError, match="patch_size"):
        PretrainCollator(tokenizer, tasks=["mim"], image_size=32)
    with pytest.raises(ValueError, match="subset"):
        PretrainCollator(tokenizer, tasks=["nsp"], image_size=32)


def test_classifier_collator_needs_labels(tokenizer, samples32):
    collate = ClassifierCollator(tokenizer, image_size=32)
    with pytest.raises(ValueError, match="without a label"):
        collate(samples32[:2])


def test_masked_hard_negatives_keep_the_word_that_makes_them_false(tokenizer):
    from repalign.data.synthetic import SyntheticCaptions

    samples = list(SyntheticCaptions(64, seed=8, image_size=32))
    collate = PretrainCollator(tokenizer, tasks=["mlm", "ap"], image_size=32, seed=0)
    batch = collate(samples)
    neg, masked = batch["neg_input_ids"], batch["neg_mlm_input_ids"]
    differs = neg != batch["input_ids"]
    assert differs.any(1).all()
    assert (masked[differs] == neg[differs]).all()
    # ...while the other words are masked like the positives' (so [MASK] marks neither)
    assert (masked == tokenizer.mask_token_id).any()


def test_prediction_positions_are_the_first_labelled_tokens_then_minus_one():
    labels = torch.tensor(
        [
            [-100, 7, -100, 9, 4, -100],
            [-100, -100, -100, -100, -100, -100],
            [-100, 1, 2, 3, 5, 6],
        ]
    )
    positions = prediction_positions(labels, 3)
    assert positions.tolist() == [[1, 3, 4], [-1, -1, -1], [1, 2, 3]]
    assert prediction_positions(labels, 10).shape == (3, 6)  # never more slots than tokens


def test_max_predictions_leaves_room_above_the_expected_count():
    assert max_predictions(0.15, 32) == 16
    assert max_predictions(0.15, 12) == 7
    assert max_predictions(0.9, 4) == 4


def test_collator_positions_are_the_first_masked_tokens(tokenizer, samples32):
    collate = PretrainCollator(tokenizer, tasks=["mlm"], image_size=32, seed=0)
    batch = collate(samples32)
    labels, positions = batch["mlm_labels"], batch["mlm_positions"]
    k = max_predictions(0.15, labels.size(1))
    assert positions.shape == (32, k)
    for row_labels, row_positions in zip(labels, positions, strict=True):
        labelled = (row_labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert [p for p in row_positions.tolist() if p >= 0] == labelled[:k]
