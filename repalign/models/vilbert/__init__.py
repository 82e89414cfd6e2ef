"""ViLBERT inside repalign: config, two-stream model with co-attention, task heads.

The adapter (``repalign.models.vilbert.adapter``) registers on first use of the
adapter registry, not on import of this package.
"""

from repalign.models.vilbert.config import ViLBERTConfig, preset
from repalign.models.vilbert.model import ViLBERT, ViLBERTOutput

__all__ = ["ViLBERT", "ViLBERTConfig", "ViLBERTOutput", "preset"]
