"""Collators: samples -> the tensors of a pretraining or fine-tuning batch.

Picklable, so they run in DataLoader workers. Random draws (masks, hard negatives,
augmentation) come from a numpy generator seeded per batch (see :class:`_Seeded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from repalign.data.base import Sample
from repalign.data.masking import (
    mask_tokens,
    max_predictions,
    prediction_positions,
    random_patch_mask,
)
from repalign.data.synthetic import Scene, hard_negative
from repalign.models.vilbert.preprocess import ImageTransform, stack_images, tokenize
from repalign.train.tasks import ATTRIBUTE_WORDS, check_tasks


class _Seeded:
    """A per-call numpy generator from the collator's seed and one draw of torch's RNG.

    torch's RNG is what DataLoader seeds per worker and what a trainer saves and
    restores, so batches stay reproducible across workers and resumes. Also holds
    what every collator needs: the tokenizer, the caption length and the image transform.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_size: int,
        augment: bool = False,
        seed: int = 0,
        max_length: int = 32,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        self.tokenizer, self.seed, self.max_length = tokenizer, seed, max_length
        self.transform = ImageTransform(image_size, tuple(mean), tuple(std), augment)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(torch.randint(0, 2**31 - 1, ()))])


class PretrainCollator(_Seeded):
    """Samples -> a pretraining batch (picklable, for DataLoader workers).

    Keys: ``input_ids``, ``attention_mask`` (B, T); ``pixel_values`` (B, 3, S, S);
    ``caption_group`` (B,) equal for identical captions; with ``ap`` and scenes in
    ``meta["scene"]``: ``neg_input_ids``, ``neg_attention_mask`` (hard negatives,
    padded to the same T); with ``mlm``: ``mlm_input_ids``, ``mlm_labels`` (-100 where
    not masked), ``mlm_attribute`` (bool, masked colour/shape words), ``mlm_positions``
    (B, K) the positions the MLM head scores (-1 in unused slots); with ``mim``:
    ``patch_mask`` (B, P) bool and ``mim_index`` (B, k).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        tasks: Sequence[str],
        image_size: int,
        mlm_probability: float = 0.15,
        mim_probability: float = 0.25,
        patch_size: int | None = None,
        **common: Any,
    ) -> None:
        """``common``: ``augment``, ``seed``, ``max_length``, ``mean``, ``std`` of
        :class:`_Seeded` (every collator's)."""
        super().__init__(tokenizer, image_size=image_size, **common)
        self.tasks = check_tasks(tasks)
        self.mlm_probability, self.mim_probability = mlm_probability, mim_probability
        self.num_patches = None
        if "mim" in self.tasks:
            if patch_size is None:
                raise ValueError(
                    "masked image modelling needs the patch grid: pass "
                    "patch_size=config.vision_patch_size to PretrainCollator"
                )
            if image_size % patch_size:
                raise ValueError(
                    f"image_size={image_size} is not a multiple of patch_size={patch_size}"
                )
            self.num_patches = (image_size // patch_size) ** 2
        if "mlm" in self.tasks:
            if tokenizer.mask_token_id is None:
                raise ValueError("the tokenizer has no [MASK] token; MLM needs one")
            special = set(tokenizer.all_special_ids)
            self.random_token_ids = torch.tensor(
                [i for i in range(len(tokenizer)) if i not in special], dtype=torch.long
            )
            vocab = tokenizer.get_vocab()
            self.attribute_ids = torch.tensor(
                [vocab[w] for w in ATTRIBUTE_WORDS if w in vocab], dtype=torch.long
            )

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        rng = self._rng()
        b = len(samples)
        texts = [s.text for s in samples]
        scenes = [s.meta.get("scene") for s in samples]
        negatives: list[str] = []
        if "ap" in self.tasks and b and all(isinstance(s, Scene) for s in scenes):
            negatives = [hard_negative(s, rng).caption for s in scenes]
        enc = tokenize(self.tokenizer, texts + negatives, max_length=self.max_length)
        batch = {
            "input_ids": enc["input_ids"][:b],
            "attention_mask": enc["attention_mask"][:b],
            "pixel_values": stack_images([s.image for s in samples], self.transform, rng),
        }
        groups: dict[str | None, int] = {}
        batch["caption_group"] = torch.tensor([groups.setdefault(t, len(groups)) for t in texts])
        if negatives:
            batch["neg_input_ids"] = enc["input_ids"][b:]
            batch["neg_attention_mask"] = enc["attention_mask"][b:]
        if "mlm" in self.tasks:
            special = enc["special_tokens_mask"][:b].bool() | ~enc["attention_mask"][:b].bool()
            ids, labels = mask_tokens(
                batch["input_ids"],
                special,
                mask_token_id=self.tokenizer.mask_token_id,
                random_token_ids=self.random_token_ids,
                rng=rng,
                probability=self.mlm_probability,
            )
            batch["mlm_input_ids"], batch["mlm_labels"] = ids, labels
            batch["mlm_attribute"] = torch.isin(labels, self.attribute_ids)
            batch["mlm_positions"] = prediction_positions(
                labels, max_predictions(self.mlm_probability, labels.size(1))
            )
            if negatives:
                # Negatives are masked alike (else [MASK] would mark a positive), except
                # where they differ from the positive: that word must stay readable.
                neg_ids = batch["neg_input_ids"]
                protect = enc["special_tokens_mask"][b:].bool() | ~enc["attention_mask"][b:].bool()
                protect |= neg_ids != batch["input_ids"]
                batch["neg_mlm_input_ids"], _ = mask_tokens(
                    neg_ids,
                    protect,
                    mask_token_id=self.tokenizer.mask_token_id,
                    random_token_ids=self.random_token_ids,
                    rng=rng,
                    probability=self.mlm_probability,
                )
        if "mim" in self.tasks:
            batch["patch_mask"], batch["mim_index"] = random_patch_mask(
                b, self.num_patches, probability=self.mim_probability, rng=rng
            )
        return batch


class ClassifierCollator(_Seeded):
    """Labelled samples (``Sample.label`` 0/1) -> ``input_ids``, ``attention_mask``,
    ``pixel_values`` and float ``labels`` (B,)."""

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        unlabelled = [s.sample_id for s in samples if s.label is None]
        if unlabelled:
            raise ValueError(
                f"samples without a label cannot be used for fine-tuning: {unlabelled[:5]}"
            )
        rng = self._rng() if self.transform.augment else None
        enc = tokenize(self.tokenizer, [s.text for s in samples], max_length=self.max_length)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": stack_images([s.image for s in samples], self.transform, rng),
            "labels": torch.tensor([float(s.label) for s in samples]),
        }
