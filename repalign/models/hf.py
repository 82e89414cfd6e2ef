"""``hf-text``: any transformers text encoder (BERT, MiniLM, RoBERTa, DistilBERT, ...).

Layers: ``text.embeddings`` (depth 0) and ``text.layer.N`` (output of encoder block N,
depth N+1), the same tensors as ``output_hidden_states`` ``hidden_states[0]`` and
``hidden_states[N+1]``. Tokenisation uses the model's own tokenizer.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from repalign.data.base import Sample
from repalign.models._registry import register_adapter
from repalign.models.base import Adapter, LayerInfo, config_json
from repalign.provenance import sha256_of_path

log = logging.getLogger(__name__)


def _looks_like_a_path(source: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else was meant as a local path."""
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def _in_hub_cache(name: str) -> bool:
    """Whether the Hugging Face cache already holds ``name``'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail at once, instead of after a minute of download retries, when a hub name can
    only come from the network and the hub cannot be reached (a compute node, a laptop
    on a plane, ``HF_HUB_OFFLINE=1``)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    reason = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname or "", port), timeout=timeout).close()
            return
        except OSError as exc:
            reason = f"{constants.ENDPOINT} cannot be reached ({exc})"
    raise OSError(
        f"{name!r} is not a local path and not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and {reason}"
    )


# Where the block list lives in common encoder families (first match wins).
_BLOCK_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer")
_EMBEDDING_PATHS = ("embeddings", "embed_tokens", "wte")


def _find_submodule(model: nn.Module, candidates: Sequence[str]) -> str | None:
    for path in candidates:
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        return path
    return None


def text_layers(model: nn.Module, prefix: str = "") -> list[LayerInfo]:
    """``text.embeddings`` + ``text.layer.N`` of a transformers encoder; ``prefix`` is
    prepended to module paths (for models nested in a wrapper)."""
    blocks_path = _find_submodule(model, _BLOCK_PATHS)
    if blocks_path is None or not isinstance(model.get_submodule(blocks_path), nn.ModuleList):
        raise ValueError(
            f"cannot find the encoder blocks of {type(model).__name__} (looked for "
            f"{', '.join(_BLOCK_PATHS)}); write an adapter for this architecture"
        )
    n = len(model.get_submodule(blocks_path))
    layers = []
    emb_path = _find_submodule(model, _EMBEDDING_PATHS)
    if emb_path is not None:
        layers.append(LayerInfo("text.embeddings", prefix + emb_path, "text", 0, 0.0))
    layers += [
        LayerInfo(f"text.layer.{i}", f"{prefix}{blocks_path}.{i}", "text", i + 1, (i + 1) / n)
        for i in range(n)
    ]
    return layers


def require_texts(samples: Sequence[Sample], who: str) -> list[str]:
    texts = [s.text for s in samples]
    missing = [s.sample_id for s, t in zip(samples, texts, strict=True) if t is None]
    if missing:
        raise ValueError(
            f"{who} needs a caption for every sample; {len(missing)} have none "
            f"(first: {missing[0]}). Use a dataset with text."
        )
    return texts  # type: ignore[return-value]


def accepted_inputs(forward: Any) -> set[str] | None:
    """The keyword inputs ``forward`` names; None (take every input) when it names none
    and takes ``**kwargs``. A transformers forward names its inputs and keeps ``**kwargs``
    for attention options, so DistilBERT still gets no ``token_type_ids``."""
    params = inspect.signature(forward).parameters.values()
    named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if not named and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return named


def tokenize_captions(
    tokenizer: Any, samples: Sequence[Sample], max_length: int, lock: Any, who: str
) -> Any:
    """The samples' captions tokenised (padded, truncated to ``max_length``, tensors) while
    holding ``lock``: fast tokenizers fail when called from several threads at once."""
    texts = require_texts(samples, who)
    with lock:
        return tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )


@register_adapter
class HFTextAdapter(Adapter):
    """A transformers encoder and its tokenizer."""

    name = "hf-text"
    collate_thread_safe = True  # the tokenizer call holds a lock
    description = "any transformers text encoder (local directory or name); text.layer.N"

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, max_length: int = 128, source: str = ""
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source
        self._layers = text_layers(model)
        # fast tokenizers are not safe to call from several threads at once ("Already borrowed")
        self._tokenizer_lock = threading.Lock()
        # tokenizers may return inputs the model does not take (token_type_ids for DistilBERT)
        self._accepts = accepted_inputs(model.forward)

    @classmethod
    def load(
        cls,
        *,
        ckpt: str | None = None,
        text_model: str | None = None,
        vision_model: str | None = None,
        max_length: int = 128,
        **options: Any,
    ) -> HFTextAdapter:
        """Load from ``text_model`` (or ``ckpt``): a local directory or a transformers name."""
        from safetensors import SafetensorError
        from transformers import AutoModel, AutoTokenizer

        source = text_model or ckpt
        if not source:
            raise ValueError("hf-text needs --text-model PATH_OR_NAME (or --ckpt PATH)")
        if vision_model:
            log.warning("hf-text ignores --vision-model %s", vision_model)
        if not Path(source).exists() and _looks_like_a_path(source):
            raise ValueError(
                f"{source} does not exist; pass a transformers model directory (config.json, "
                "weights and tokenizer files) or a hub name such as org/model"
            )
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise ValueError(
                f"{source} is a directory without config.json; it is not a transformers model "
                "directory (pass one with config.json, weights and tokenizer files)"
            )
        try:
            offline = Path(source).exists() or _in_hub_cache(source)
            if not offline:
                _check_hub_reachable(source)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
            model = AutoModel.from_pretrained(source, local_files_only=offline, **options)
        except (OSError, SafetensorError) as exc:  # SafetensorError: a damaged weights file
            raise ValueError(
                f"cannot load a transformers model from {source!r}: {exc}. Pass a local "
                "directory with config.json, weights and tokenizer files."
            ) from None
        return cls(model, tokenizer, max_length=max_length, source=str(source))

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        enc = tokenize_captions(
            self.tokenizer, samples, self.max_length, self._tokenizer_lock, self.name
        )
        return {k: v for k, v in enc.items() if self._accepts is None or k in self._accepts}

    def provenance(self) -> dict[str, str]:
        config = getattr(self.model, "config", None)
        path = Path(self.source) if self.source else None
        return {
            "checkpoint": self.source,
            "checkpoint_sha256": sha256_of_path(path) if path is not None else "",
            "config_json": config_json(config),
        }
