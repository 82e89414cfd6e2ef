"""Pretraining throughput: ViLBERT (all objectives) vs the two towers alone, same run.

    python benchmarks/train.py                          # CPU: tiny preset, steps/s
    python benchmarks/train.py --device cuda            # base preset, bf16, eager + compiled,
                                                        # and the towers-alone yardstick
    python benchmarks/train.py --device cuda --json out.json

Rows:
- ``vilbert eager`` / ``vilbert compiled``: one full pretraining step of
  :class:`~repalign.train.objectives.PretrainModel` (MLM, contrastive MIM, AP, ITC)
  through :meth:`repalign.train.loop.Trainer.train_step`: bf16 autocast, SDPA,
  fused AdamW with parameter groups, gradient clipping, no host syncs, with the
  objective settings of ``configs/vilbert-base.yaml`` (``--config``): its
  ``task_batch_sizes`` (scaled by ``--batch-size`` / the config's batch size) and
  ``swap_negative_ratio``.
- ``vilbert eager, every row``: the same step with every task on every row of the
  batch (no ``task_batch_sizes``), for comparison.
- ``towers alone``: timm ViT-B/16 + transformers BERT-base (the ``base`` preset's
  towers, random weights), one forward/backward and one fused AdamW step on both.

Batches are made once on the device (random 32-token captions, random images,
masks drawn as the collator would), so the numbers measure the training step,
not data loading (which runs in DataLoader workers, off the critical path).
FLOPs per step are counted with ``torch.utils.flop_counter`` on one step;
MFU = achieved FLOP/s / the chip's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s;
``--peak-tflops`` for other chips).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import sync  # noqa: E402
from repalign.data.masking import (  # noqa: E402
    mask_tokens,
    max_predictions,
    prediction_positions,
    random_patch_mask,
)
from repalign.models.vilbert import preset  # noqa: E402
from repalign.train.config import LoopConfig, OptimConfig  # noqa: E402
from repalign.train.loop import Trainer  # noqa: E402
from repalign.train.objectives import PretrainModel  # noqa: E402
from repalign.train.tasks import TASKS  # noqa: E402

#: the rows --rows can pick (cudagraphs: torch.compile's reduce-overhead mode)
ROWS = ("eager", "towers", "every", "compiled", "cudagraphs")

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def make_batch(vconfig, batch: int, text_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A pretraining batch for every task, as :class:`PretrainCollator` would build it."""
    rng = np.random.default_rng(0)
    vocab = int(vconfig.text["vocab_size"])
    ids = torch.from_numpy(rng.integers(5, vocab, size=(batch, text_len)))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    size, patch = vconfig.vision_image_size, vconfig.vision_patch_size
    mlm_ids, mlm_labels = mask_tokens(
        ids, special, mask_token_id=4, random_token_ids=torch.arange(5, vocab), rng=rng
    )
    patch_mask, mim_index = random_patch_mask(
        batch, (size // patch) ** 2, probability=0.25, rng=rng
    )
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.from_numpy(
            rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        ),
        "caption_group": torch.arange(batch),
        "neg_input_ids": ids.roll(1, 0),
        "neg_attention_mask": torch.ones_like(ids),
        "neg_mlm_input_ids": mlm_ids.roll(1, 0),
        "mlm_input_ids": mlm_ids,
        "mlm_labels": mlm_labels,
        "mlm_attribute": torch.zeros_like(ids, dtype=torch.bool),
        "mlm_positions": prediction_positions(mlm_labels, max_predictions(0.15, text_len)),
        "patch_mask": patch_mask,
        "mim_index": mim_index,
    }
    return {k: v.to(device) for k, v in out.items()}


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def measure(step, device: torch.device, batch: int, steps: int, warmup: int) -> dict[str, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - start
    flops = count_flops(step)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    result = {
        "batch": batch,
        "step_ms": seconds * 1e3,
        "pairs_per_s": batch / seconds,
        "steps_per_s": 1 / seconds,
        "tflop_per_step": flops / 1e12,
        "warmup_s": warm_s,
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def objective_settings(config_path: Path, batch: int) -> dict:
    """The config's ``objective`` (PretrainModel keyword arguments), its task batch sizes
    scaled from the config's batch size to ``batch``."""
    from repalign.train.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, config_path)
    objective = dict(config.objective)
    sizes = objective.get("task_batch_sizes") or {}
    objective["task_batch_sizes"] = {
        t: max(1, round(n * batch / config.batch_size)) for t, n in sizes.items()
    }
    return objective


def vilbert_row(
    args, device: torch.device, compile: bool, objective: dict, mode: str = "default"
) -> dict[str, float]:
    vconfig = preset(args.preset)
    torch.manual_seed(0)
    model = PretrainModel(vconfig, tasks=TASKS, **objective)
    loop = LoopConfig(
        device=str(device), compile=compile, compile_mode=mode, bf16=True, progress=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, None, run_dir=tmp, optim=OptimConfig(), loop=loop)
        batch = make_batch(vconfig, args.batch_size, args.text_len, device)
        row = measure(
            lambda: trainer.train_step([batch]), device, args.batch_size, args.steps, args.warmup
        )
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return row


def towers_row(args, device: torch.device) -> dict[str, float]:
    from repalign.models.vilbert.model import build_text_tower, build_vision_tower

    vconfig = preset(args.preset)
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict(
        {"text": build_text_tower(vconfig), "vision": build_vision_tower(vconfig)}
    ).to(device)
    optimizer = torch.optim.AdamW(towers.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(vconfig, args.batch_size, args.text_len, device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            text = towers["text"](
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            vision = towers["vision"].forward_features(batch["pixel_values"])
            loss = text.float().mean() + vision.float().mean()
        loss.backward()
        optimizer.step()

    row = measure(step, device, args.batch_size, args.steps, args.warmup)
    row["params_m"] = sum(p.numel() for p in towers.parameters()) / 1e6
    return row


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="default: base on CUDA, tiny on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 CUDA, 32 CPU")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled row")
    parser.add_argument("--towers", action="store_true", help="towers row on CPU too")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "configs" / "vilbert-base.yaml",
        help="pretraining config whose objective settings the vilbert rows use",
    )
    parser.add_argument(
        "--every-row", action="store_true", help="also on CPU: the row with every task on every row"
    )
    parser.add_argument(
        "--rows",
        default="eager,towers,every,compiled",
        help=f"which rows (comma list of {', '.join(ROWS)}); on CPU "
        "towers and every also need --towers / --every-row, the compiled ones need CUDA; "
        "cudagraphs is torch.compile's reduce-overhead mode (CUDA graphs)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    wanted = set(args.rows.split(","))
    unknown = wanted - set(ROWS)
    if unknown:
        parser.error(f"unknown --rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.preset = args.preset or ("base" if cuda else "tiny")
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.steps = args.steps or (10 if cuda else 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)

    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"
    )
    meta = {
        "device": where,
        "preset": args.preset,
        "batch": args.batch_size,
        "text_len": args.text_len,
        "torch": torch.__version__,
    }
    objective = objective_settings(args.config, args.batch_size)
    every_row = {k: v for k, v in objective.items() if k != "task_batch_sizes"}
    meta["objective"] = objective
    rows: dict[str, dict[str, float]] = {}
    runs = []
    if "eager" in wanted:
        runs.append(("vilbert eager", lambda: vilbert_row(args, device, False, objective)))
    if (cuda or args.towers) and "towers" in wanted:
        runs.append(("towers alone", lambda: towers_row(args, device)))
    if (cuda or args.every_row) and "every" in wanted:
        runs.append(
            ("vilbert eager, every row", lambda: vilbert_row(args, device, False, every_row))
        )
    if cuda and not args.no_compile and "compiled" in wanted:  # last: compiling takes longest
        runs.append(("vilbert compiled", lambda: vilbert_row(args, device, True, objective)))
    if cuda and not args.no_compile and "cudagraphs" in wanted:
        runs.append(
            (
                "vilbert CUDA graphs",
                lambda: vilbert_row(args, device, True, objective, mode="reduce-overhead"),
            )
        )
    failed: dict[str, str] = {}
    for name, run in runs:
        try:
            rows[name] = run()
        except Exception as exc:  # one row failing (e.g. a compile mode) must not lose the rest
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED {failed[name][:2000]}", flush=True)
            if args.json:
                args.json.write_text(
                    json.dumps({"meta": meta, "rows": rows, "failed": failed}, indent=2)
                )
            continue
        if peak:
            r = rows[name]
            r["mfu"] = r["tflop_per_step"] * r["steps_per_s"] / peak
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[name].items()), flush=True)
        if args.json:  # after every row: a run cut short still leaves what it measured
            args.json.write_text(
                json.dumps({"meta": meta, "rows": rows, "failed": failed}, indent=2)
            )
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    print(
        f"\n{args.preset} preset, batch {args.batch_size}, {args.text_len} text tokens, {where}, "
        f"torch {torch.__version__}, objective {objective}"
    )
    header = f"| {'run':<24} | pairs/s | step ms | TFLOP/step | MFU | peak GiB | params M |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, r in rows.items():
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if "peak_mem_gib" in r else "-"
        print(
            f"| {name:<24} | {r['pairs_per_s']:7.1f} | {r['step_ms']:7.1f} | {r['tflop_per_step']:10.3f} "
            f"| {mfu:>3} | {mem:>8} | {r['params_m']:8.1f} |"
        )
    if "towers alone" in rows:
        towers = rows["towers alone"]
        for name in (
            "vilbert eager",
            "vilbert eager, every row",
            "vilbert compiled",
            "vilbert CUDA graphs",
        ):
            if name in rows:
                r = rows[name]
                print(
                    f"{name} / towers alone: {r['pairs_per_s'] / towers['pairs_per_s']:.2f}x "
                    f"pairs/s, {r['tflop_per_step'] / towers['tflop_per_step']:.2f}x FLOPs"
                )
    if not cuda and "vilbert eager" in rows:
        print(f"{args.preset} preset on CPU: {rows['vilbert eager']['steps_per_s']:.2f} steps/s")


if __name__ == "__main__":
    main()
