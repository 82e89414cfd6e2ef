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

import torch
import torch.nn.functional as F
from torch import nn

from repalign.data.masking import IGNORE_INDEX
from repalign.distributed import all_gather, all_gather_with_grad, get_rank, is_distributed
from repalign.models.vilbert.config import ViLBERTConfig
from repalign.models.vilbert.heads import ContrastiveHead, MIMHead, MLMHead, PairHead
from repalign.models.vilbert.model import ViLBERT, ViLBERTOutput
from repalign.train.losses import (
    caption_keys,
    contrastive_loss,
    gather_tokens,
    info_nce,
    masked_mean,
)
from repalign.train.tasks import TASKS, check_task_batch_sizes, check_tasks


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
        """MLM on the first ``n`` rows (their captions were masked): text (n, T, H). The
        head runs only on the K slots of ``mlm_positions`` (BERT's masked_lm_positions)."""
        embeddings = self.vilbert.text.get_input_embeddings().weight
        positions = batch["mlm_positions"][:n]  # (n, K), -1 in unused slots
        used = positions >= 0
        slots = positions.clamp(min=0)
        labels = batch["mlm_labels"][:n].gather(1, slots).masked_fill(~used, IGNORE_INDEX)
        logits = self.heads["mlm"](gather_tokens(text, slots), embeddings).float()  # (n, K, V)
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
            attribute = batch["mlm_attribute"][:n].gather(1, slots) & used
            metrics["mlm_attribute_accuracy"] = (correct & attribute).sum() / attribute.sum().clamp(
                min=1
            )
        return loss, metrics

    def _mim(
        self, index: torch.Tensor, fused: torch.Tensor, clean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """index (n, k) masked patch positions (+1 skips the class token); fused and
        clean (n, 1+P, H)."""
        pred = self.heads["mim"](gather_tokens(fused, index + 1)).flatten(0, 1)
        target = gather_tokens(clean, index + 1).flatten(0, 1)
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
