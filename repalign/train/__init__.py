"""Training ViLBERT inside repalign: a model-agnostic loop, checkpoints, pretraining, fine-tuning."""

from repalign.train.checkpoint import CheckpointError, load_model_weights, save_checkpoint
from repalign.train.config import FinetuneConfig, LoopConfig, OptimConfig, PretrainConfig
from repalign.train.loop import Periodic, Trainer

__all__ = [
    "CheckpointError",
    "FinetuneConfig",
    "LoopConfig",
    "OptimConfig",
    "Periodic",
    "PretrainConfig",
    "Trainer",
    "load_model_weights",
    "save_checkpoint",
]
