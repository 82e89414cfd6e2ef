"""ViLBERT's pretraining objectives and the fine-tuning classifier.

One :class:`PretrainModel` forward computes every selected task in a single pass
through the towers: with MLM/MIM on, the captions and images are masked and every
task sees the masked inputs (as in the original ViLBERT); otherwise they are clean.

- ``itc``: ALBEF's image-text contrastive loss on the mean-pooled unimodal tower
  states (learnable temperature; identical captions in a batch count as positives).
- ``ap``: alignment prediction (image-text matching) on the fused pooled outputs of
  B + n pairs: every image with its own caption, and n images (a random subset) with a
  negative caption. A share ``swap_negative_ratio`` of the negatives (rounded) are
  the samples' swapped-attribute hard negatives (synthetic scenes: a colour, shape or
  relation changed; only those captions go through the text tower), the others are
  captions of the batch drawn by ITC similarity (never one identical to the image's
  own). In eval mode every image gets its hard negative when there is one, so
  ``ap_accuracy`` measures hard negatives.
- ``mlm`` and ``mim`` on the positive pairs only. MIM is contrastive: the fused state
  of each masked patch must pick out the clean vision-tower encoding of the same patch
  (a no-gradient forward of the unmasked image) among all masked patches of the batch
  (other positions and other images).

Per-task batch sizes (``task_batch_sizes``, training only): ``{"mlm": n}`` masks the
captions of the first n pairs of a batch (the others stay clean), ``{"mim": n}`` the
images of the first n pairs (the clean target forward then runs on n images only),
``{"ap": n}`` gives n images a negative caption (positives are weighted n / B so the
two classes weigh the same). Batches are shuffled, so the first n are a random
subset. Smaller n trade those tasks' signal per step for compute: the MIM target
forward and the fusion layers on negatives are the largest costs beyond the towers.

The forward never reads a value back to the host (no ``.item()``), so it can be
compiled and runs without syncs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from repalign.data.base import Sample
from repalign.data.masking import IGNORE_INDEX, mask_tokens, random_patch_mask
from repalign.data.synthetic import COLOURS, SHAPES, Scene, hard_negative
from repalign.distributed import all_gather, all_gather_with_grad, get_rank, is_distributed
from repalign.models.vilbert.config import ViLBERTConfig
from repalign.models.vilbert.heads import ContrastiveHead, MIMHead, MLMHead, PairHead
from repalign.models.vilbert.model import ViLBERT, ViLBERTOutput
from repalign.models.vilbert.preprocess import ImageTransform, stack_images, tokenize

TASKS: tuple[str, ...] = ("mlm", "mim", "ap", "itc")
# Tasks whose rows per batch ``task_batch_sizes`` can limit (ITC always uses the batch).
SIZED_TASKS: tuple[str, ...] = ("mlm", "mim", "ap")
# Words whose masked prediction needs the image: reported as mlm_attribute_accuracy.
ATTRIBUTE_WORDS: tuple[str, ...] = (*COLOURS, *SHAPES)


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Validate a task list (any non-empty subset of :data:`TASKS`), in canonical order."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(
            f"tasks must be a non-empty subset of {', '.join(TASKS)}; got {list(tasks)}"
        )
    return tuple(t for t in TASKS if t in tasks)


def check_task_batch_sizes(sizes: Mapping[str, int], tasks: Sequence[str]) -> dict[str, int]:
    """Validate ``task_batch_sizes``: selected tasks among :data:`SIZED_TASKS`, sizes >= 1."""
    wrong = sorted(t for t in sizes if t not in SIZED_TASKS or t not in tasks)
    if wrong:
        raise ValueError(
            f"task_batch_sizes for {wrong}: give sizes only for selected tasks among "
            f"{', '.join(SIZED_TASKS)} (ITC always uses the whole batch); selected: {list(tasks)}"
        )
    bad = {t: n for t, n in sizes.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"task_batch_sizes must be whole numbers >= 1, got {bad}")
    return dict(sizes)


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
    not masked), ``mlm_attribute`` (bool, masked colour/shape words); with ``mim``:
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
        augment: bool = False,
        seed: int = 0,
        max_length: int = 32,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__(
            tokenizer,
            image_size=image_size,
            augment=augment,
            seed=seed,
            max_length=max_length,
            mean=mean,
            std=std,
        )
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


# ----------------------------------------------------------------------------- losses
def contrastive_loss(
    logits: torch.Tensor, groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE on (B, B) text-image logits; pairs with the same caption group
    are all positives. Returns (loss, accuracy of the top match in both directions)."""
    b = logits.size(0)
    if groups is None:
        positive = torch.eye(b, dtype=torch.bool, device=logits.device)
    else:
        positive = groups[:, None] == groups[None, :]
    target = positive.float() / positive.sum(1, keepdim=True)
    loss = 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean()
        - (target * logits.T.log_softmax(1)).sum(1).mean()
    )
    rows = positive.gather(1, logits.argmax(1, keepdim=True)).float().mean()
    cols = positive.gather(1, logits.T.argmax(1, keepdim=True)).float().mean()
    return loss, 0.5 * (rows + cols)


def info_nce(
    pred: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) predictions vs (N, D) targets, row i's positive is target i."""
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    labels = torch.arange(logits.size(0), device=logits.device)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: states (B, T, H), mask (B, T) -> (B, H)."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp(min=1)


def caption_keys(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 hash of each row's real tokens: equal captions get equal keys, whatever
    the padding (used as caption groups across the ranks of a DDP run)."""
    gen = torch.Generator().manual_seed(0x5EED)
    weights = torch.randint(1, 2**62, (input_ids.size(1),), generator=gen) | 1
    ids = (input_ids.long() + 1) * mask.long()
    return (ids * weights.to(ids.device)).sum(1) + mask.long().sum(1)


def _gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states (B, L, H), index (B, k) -> (B, k, H)."""
    return states.gather(1, index[..., None].expand(-1, -1, states.size(-1)))


class PretrainModel(nn.Module):
    """ViLBERT plus the heads of the selected ``tasks``; ``weights`` scale each task's loss.

    ``swap_negative_ratio``: share of AP negatives (in training) that are the
    swapped-attribute hard negatives from the batch, when it has them.
    ``task_batch_sizes``: rows per batch for ``mlm``, ``mim`` and ``ap`` in training
    (see the module docstring); evaluation always uses every row.
    """

    def __init__(
        self,
        config: ViLBERTConfig,
        *,
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        swap_negative_ratio: float = 0.5,
        task_batch_sizes: Mapping[str, int] | None = None,
        itc_dim: int = 128,
        mim_temperature: float = 0.1,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights given for tasks that are not selected: {unknown}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        if not 0.0 <= swap_negative_ratio <= 1.0:
            raise ValueError(f"swap_negative_ratio must lie in [0, 1], got {swap_negative_ratio}")
        self.swap_negative_ratio = swap_negative_ratio
        self.task_batch_sizes = check_task_batch_sizes(task_batch_sizes or {}, self.tasks)
        self.mim_temperature = mim_temperature
        self.vilbert = ViLBERT(config, mask_token="mim" in self.tasks, load_weights=load_weights)
        h = config.hidden_size
        self.heads = nn.ModuleDict()
        if "mlm" in self.tasks:
            emb = self.vilbert.text.get_input_embeddings()
            self.heads["mlm"] = MLMHead(h, emb.embedding_dim, emb.num_embeddings)
        if "mim" in self.tasks:
            self.heads["mim"] = MIMHead(h)
        if "ap" in self.tasks:
            self.heads["ap"] = PairHead(h, config.dropout)
        if "itc" in self.tasks:
            self.heads["itc"] = ContrastiveHead(h, itc_dim)

    def pretrained_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of pretrained towers (for a smaller learning rate)."""
        return tuple(f"vilbert.{p}" for p in self.vilbert.pretrained_prefixes())

    @property
    def _touch_all(self) -> bool:
        """With a subset of tasks (selected, or active this step: ``self.tasks`` may be
        narrowed by a task sampler) some parameters feed no loss, e.g. the vision stream's
        last feed-forward under MLM alone. A zero-weighted touch then gives them a zero
        gradient so DDP can run with ``find_unused_parameters=False``."""
        return set(self.tasks) != set(TASKS)

    def _rows(self, task: str, b: int) -> int:
        """How many of the batch's ``b`` rows ``task`` uses in this forward."""
        if not self.training or task not in self.task_batch_sizes:
            return b
        return min(b, self.task_batch_sizes[task])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tasks = set(self.tasks)
        model = self.vilbert
        mask, pixels = batch["attention_mask"], batch["pixel_values"]
        b = mask.size(0)
        n_mlm = self._rows("mlm", b) if "mlm" in tasks else 0
        n_mim = self._rows("mim", b) if "mim" in tasks else 0
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        # One pass: masked text/patches in the first n_mlm/n_mim rows (ITC and AP see them
        # too, as the original ViLBERT does), clean inputs elsewhere.
        ids = batch["input_ids"]
        if n_mlm:
            ids = torch.cat([batch["mlm_input_ids"][:n_mlm], ids[n_mlm:]])
        patch_mask = None
        if n_mim:
            patch_mask = batch["patch_mask"]
            patch_mask = torch.cat([patch_mask[:n_mim], torch.zeros_like(patch_mask[n_mim:])])
        text = model.encode_text(ids, mask)  # (B, T, H)
        vision = model.encode_image(pixels, patch_mask)
        sim = None
        if "itc" in tasks:
            # (B texts, B images) on mean-pooled unimodal states: early in training
            # the [CLS] tokens carry almost no per-sample signal, means do.
            text_emb, image_emb = masked_mean(text, mask), vision[:, 1:].mean(1)
            if self.training and is_distributed():
                sim, itc_logits, groups = self._global_itc(batch, text_emb, image_emb)
            else:
                sim = itc_logits = self.heads["itc"](text_emb, image_emb)
                groups = batch.get("caption_group")
            losses["itc"], metrics["itc_accuracy"] = contrastive_loss(itc_logits, groups)
        if tasks & {"ap", "mlm", "mim"}:
            fused_text, fused_mask, vision_rows = text, mask, None
            if "ap" in tasks:  # rows B..B+n: n images, each with a negative caption
                images = self._ap_images(b, text.device)
                neg_text, neg_mask, neg_ok = self._negatives(batch, text, sim, images, n_mlm)
                fused_text = torch.cat([text, neg_text])
                fused_mask = torch.cat([mask, neg_mask])
                vision_rows = torch.cat([torch.arange(b, device=text.device), images])
            out = model.fuse(fused_text, fused_mask, vision, vision_rows=vision_rows)
            if "ap" in tasks:
                losses["ap"], ap_metrics = self._alignment(out, neg_ok)
                metrics.update(ap_metrics)
            if "mlm" in tasks:  # positives only
                losses["mlm"], mlm_metrics = self._mlm(batch, out.text[:n_mlm], n_mlm)
                metrics.update(mlm_metrics)
            if "mim" in tasks:
                with torch.no_grad():  # stop-gradient target: the unmasked images
                    target = model.encode_image(pixels[:n_mim])
                losses["mim"], metrics["mim_accuracy"] = self._mim(
                    batch["mim_index"][:n_mim], out.vision[:n_mim], target
                )
        loss = sum(self.weights[t] * losses[t] for t in self.tasks)
        if self._touch_all:
            loss = loss + 0.0 * sum(p.view(-1)[0] for p in self.parameters() if p.requires_grad)
        result = {"loss": loss}
        for t in self.tasks:
            result[f"{t}_loss"] = losses[t].detach()
        result.update({k: v.detach() for k, v in metrics.items()})
        return result

    def _ap_images(self, b: int, device: torch.device) -> torch.Tensor:
        """The images that get a negative caption: all in order when evaluating, a random
        ``task_batch_sizes["ap"]`` of them (random order: which negatives are swaps is
        then random too) in training."""
        if not self.training:
            return torch.arange(b, device=device)
        return torch.randperm(b, device=device)[: self._rows("ap", b)]

    def _global_itc(
        self, batch: Mapping[str, torch.Tensor], text_emb: torch.Tensor, image_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Under DDP: ITC over the global batch, as one process with all of it would compute.

        Features of every rank are gathered with gradients; each rank computes the same
        (G, G) loss (DDP's gradient averaging then gives the single-process gradient).
        Returns this rank's (B, B) block (for AP negatives), the (G, G) logits and
        global caption groups (token-id hashes: equal captions are positives across ranks).
        """
        b, r = text_emb.size(0), get_rank()
        logits = self.heads["itc"](all_gather_with_grad(text_emb), all_gather_with_grad(image_emb))
        groups = None
        if "caption_group" in batch:
            groups = all_gather(caption_keys(batch["input_ids"], batch["attention_mask"]))
        return logits[r * b : (r + 1) * b, r * b : (r + 1) * b], logits, groups

    def _negatives(
        self,
        batch: Mapping[str, torch.Tensor],
        text: torch.Tensor,
        sim: torch.Tensor | None,
        images: torch.Tensor,
        n_mlm: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A negative caption for each of ``images`` (n,): (n, T, H) states, (n, T) mask
        and (n,) usable flag.

        The first ``round(swap_negative_ratio * n)`` (all of them in eval mode) are the
        images' swapped-attribute captions when the batch has them; only those go
        through the text tower. The rest are other captions of the batch, drawn by ITC
        similarity, never identical to the image's own and masked for MLM exactly when
        the image's own caption is (else a [MASK] token would give the negative away).
        """
        b, n = text.size(0), images.numel()
        mask = batch["attention_mask"]
        masked = torch.arange(b, device=text.device) < n_mlm  # rows with MLM-masked captions
        k = 0
        if "neg_input_ids" in batch:
            k = round(self.swap_negative_ratio * n) if self.training else n
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if k:
            swapped = images[:k]
            ids = batch["neg_input_ids"][swapped]
            if n_mlm:
                masked_ids = batch["neg_mlm_input_ids"][swapped]
                ids = torch.where(masked[swapped, None], masked_ids, ids)
            swap_mask = batch["neg_attention_mask"][swapped]
            ok = torch.ones(k, dtype=torch.bool, device=text.device)
            parts.append((self.vilbert.encode_text(ids, swap_mask), swap_mask, ok))
        if k < n:
            rest = images[k:]
            groups = batch.get("caption_group")
            if groups is None:
                groups = torch.arange(b, device=text.device)
            valid = (groups[rest, None] != groups[None, :]) & (masked[rest, None] == masked)
            scores = (
                sim.detach().T[rest].float()
                if sim is not None
                else torch.zeros(rest.numel(), b, device=text.device)
            )
            scores = scores.masked_fill(~valid, float("-inf"))
            has_valid = valid.any(1)
            scores = torch.where(has_valid[:, None], scores, torch.zeros_like(scores))
            pick = torch.multinomial(scores.softmax(1), 1).squeeze(1)
            parts.append((text[pick], mask[pick], has_valid))
        neg_text, neg_mask, neg_ok = (torch.cat(p) for p in zip(*parts, strict=True))
        return neg_text, neg_mask, neg_ok

    def _alignment(
        self, out: ViLBERTOutput, neg_ok: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """AP loss on B + n fused pairs: rows 0..B positives, then n negatives. Each class
        weighs the same in the loss and the accuracy (positives n / B each)."""
        n = neg_ok.size(0)
        logits = self.heads["ap"](out.text_pooled, out.vision_pooled).float()  # (B + n,)
        b = logits.size(0) - n
        pos = torch.ones(b, device=logits.device)
        labels = torch.cat([pos, torch.zeros(n, device=logits.device)])
        weight = torch.cat([pos * (n / b), neg_ok.float()])
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        correct = ((logits > 0).float() == labels).float()
        neg_logits = logits[b:] * neg_ok
        return (bce * weight).sum() / weight.sum(), {
            "ap_accuracy": (correct * weight).sum() / weight.sum(),
            "ap_margin": logits[:b].mean() - neg_logits.sum() / neg_ok.sum().clamp(min=1),
        }

    def _mlm(
        self, batch: Mapping[str, torch.Tensor], text: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MLM on the first ``n`` rows (their captions were masked): text (n, T, H)."""
        embeddings = self.vilbert.text.get_input_embeddings().weight
        logits = self.heads["mlm"](text, embeddings).float()  # (n, T, V)
        labels = batch["mlm_labels"][:n]
        picked = labels != IGNORE_INDEX
        count = picked.sum().clamp(min=1)
        loss = (
            F.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            / count
        )
        correct = (logits.argmax(-1) == labels) & picked
        metrics = {"mlm_accuracy": correct.sum() / count}
        if "mlm_attribute" in batch:
            attribute = batch["mlm_attribute"][:n]
            metrics["mlm_attribute_accuracy"] = (correct & attribute).sum() / attribute.sum().clamp(
                min=1
            )
        return loss, metrics

    def _mim(
        self, index: torch.Tensor, fused: torch.Tensor, clean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """index (n, k) masked patch positions (+1 skips the class token); fused and
        clean (n, 1+P, H)."""
        pred = self.heads["mim"](_gather_tokens(fused, index + 1)).flatten(0, 1)
        target = _gather_tokens(clean, index + 1).flatten(0, 1)
        return info_nce(pred.float(), target.float(), self.mim_temperature)


class ClassifierModel(nn.Module):
    """ViLBERT with a binary head on the fused pooled outputs (Hateful-Memes-style tasks)."""

    def __init__(self, config: ViLBERTConfig, *, load_weights: bool = True) -> None:
        super().__init__()
        self.vilbert = ViLBERT(config, load_weights=load_weights)
        self.head = PairHead(config.hidden_size, config.dropout)

    def pretrained_prefixes(self) -> tuple[str, ...]:
        return tuple(f"vilbert.{p}" for p in self.vilbert.pretrained_prefixes())

    def load_pretrained(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Take the ``vilbert.*`` weights of a :class:`PretrainModel` state dict (heads and
        the MIM mask token are dropped); any other mismatch is an error."""
        own = {k[len("vilbert.") :]: v for k, v in state_dict.items() if k.startswith("vilbert.")}
        own.pop("mask_token", None)
        if not own:
            raise ValueError(
                "the state dict has no 'vilbert.*' weights: is it a PretrainModel checkpoint?"
            )
        missing, unexpected = self.vilbert.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"pretrained weights do not fit this ViLBERT config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.vilbert(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        logits = self.head(out.text_pooled, out.vision_pooled).float()
        result = {"logits": logits.detach()}
        if "labels" in batch:
            labels = batch["labels"].float()
            result["loss"] = F.binary_cross_entropy_with_logits(logits, labels)
            result["accuracy"] = ((logits > 0).float() == labels).float().mean()
        return result
