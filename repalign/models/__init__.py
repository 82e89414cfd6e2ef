"""Model adapters: load a model, list its layers, turn samples into inputs."""

from repalign.models._registry import get_adapter, list_adapters, register_adapter
from repalign.models.base import Adapter, LayerInfo
from repalign.models.module import ModuleAdapter

__all__ = [
    "Adapter",
    "LayerInfo",
    "ModuleAdapter",
    "get_adapter",
    "list_adapters",
    "register_adapter",
]
