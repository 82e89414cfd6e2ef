"""Run configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is described by one :class:`PretrainConfig` or :class:`FinetuneConfig`.
It is built from defaults, then a YAML file, then command-line overrides
(``optim.lr=1e-3``, ``tasks=[ap,itc]``), and the resolved result is written to
``RUN/config.yaml`` so every run can be repeated from its own directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from repalign._suggest import did_you_mean

T = TypeVar("T")


#: the modes ``torch.compile`` takes (``loop.compile_mode``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _at_least(config: Any, section: str, minimums: Mapping[str, float]) -> None:
    """Refuse a setting below its minimum, naming it as an override would (``loop.steps``)."""
    for key, low in minimums.items():
        value = getattr(config, key)
        if value < low:
            raise ValueError(f"{section}.{key} must be >= {low:g}, got {value!r}")


@dataclass
class OptimConfig:
    """AdamW with warmup then decay; pretrained towers train at ``pretrained_lr_scale`` x lr."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 1.0
    pretrained_lr_scale: float = 0.1
    # Parameter-name prefixes trained at ``pretrained_lr_scale``; when empty the model's
    # own ``pretrained_prefixes`` attribute (if any) decides.
    pretrained_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _at_least(self, "optim", {"lr": 0, "warmup_steps": 0})


@dataclass
class LoopConfig:
    """How long and how the loop runs; everything here is model-agnostic."""

    steps: int = 1000
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: only the final checkpoint (and one on interruption)
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when available
    bf16: bool = True  # autocast to bfloat16 on CUDA; ignored on CPU
    compile: bool = False
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs: no per-kernel launch
    # cost), "max-autotune" or "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    num_workers: int = 0
    # CPU threads for torch (0: torch's default). 1 is much faster on a shared, busy
    # machine, where OpenMP threads of several processes spin against each other.
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        # steps=0 is allowed: the model at its initialisation, evaluated and saved (a baseline)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"loop.compile_mode {self.compile_mode!r} is not a torch.compile mode; choose "
                f"one of {', '.join(COMPILE_MODES)}"
            )
        _at_least(self, "loop", {"steps": 0, "grad_accum": 1, "log_every": 1, "eval_every": 0,
                                 "checkpoint_every": 0, "keep_checkpoints": 0, "num_workers": 0,
                                 "threads": 0})  # fmt: skip


@dataclass
class DataConfig:
    """Where pairs come from: ``synthetic`` (embedded), a captions TSV, a memes jsonl or a cache."""

    name: str = "synthetic"
    n_train: int = 20000  # synthetic only
    n_eval: int = 512  # synthetic only; held out by seed
    seed: int = 0
    image_size: int = 64
    images: str | None = None  # image folder for TSV / jsonl data
    eval_path: str | None = None  # held-out (dev) file for TSV / jsonl data
    test_path: str | None = None  # fine-tuning: a test jsonl reported next to dev
    cache: str | None = None  # an image cache made by `repalign data cache`

    def __post_init__(self) -> None:
        from repalign.data.loading import parse_synthetic

        spec = parse_synthetic(self.name) if isinstance(self.name, str) else None
        if spec is not None and self.name != "synthetic":
            parts = [f"n_train: {spec.n}"] if spec.n is not None else []
            parts += [f"seed: {spec.seed}"] if spec.seed is not None else []
            raise ValueError(
                f"data.name {self.name!r}: in a config write name: synthetic and "
                f"{', '.join(parts) or 'n_train: N'} (the --data option takes synthetic:N:SEED)"
            )


@dataclass
class ProbeConfig:
    """Alignment probes between the text and vision streams at every fusion layer."""

    metrics: list[str] = field(default_factory=list)
    every: int = 0
    n: int = 256

    def __post_init__(self) -> None:
        _at_least(self, "probe", {"every": 0, "n": 1})


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    tasks: list[str] = field(default_factory=lambda: ["mlm", "mim", "ap", "itc"])
    task_weights: dict[str, float] = field(default_factory=dict)
    # Extra PretrainModel arguments. Training AP on the swapped-attribute hard negatives
    # only (ratio 1.0; they exist for synthetic scenes) learned slightly faster than half
    # of them (held-out AP 0.836 vs 0.820 after 1000 steps, tiny preset).
    objective: dict[str, Any] = field(default_factory=lambda: {"swap_negative_ratio": 1.0})
    # Probability that a task's loss is active in a given step (1.0 when absent): the
    # "different batch sizes for tasks" knob, in expectation a task's effective batch is
    # ratio x batch_size.
    task_ratios: dict[str, float] = field(default_factory=dict)
    batch_size: int = 64
    mlm_probability: float = 0.15
    augment: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50))
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=5000, log_every=20, eval_every=250)
    )
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class FinetuneConfig:
    out: str = "runs/finetune"
    init: str | None = None  # a pretraining run dir or checkpoint dir
    from_scratch: bool = False  # ignore ``init``: the no-pretraining baseline
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    patience: int = 5  # evaluations without AUROC improvement before stopping; 0 disables
    data: DataConfig = field(
        default_factory=lambda: DataConfig(name="synthetic-binary", n_train=1000, n_eval=500)
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=20))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=300, eval_every=50))


# --------------------------------------------------------------------------- building


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise with the key's path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if origin is tuple:
            return tuple(
                _coerce(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=False))
            )
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is float and isinstance(value, str):
        value = _scalar(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"{where} must be {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type[T], values: Mapping[str, Any], where: str = "", base: T | None = None) -> T:
    """``base`` (default ``cls()``) with ``values`` replaced; nested dataclasses are updated
    from the parent's own default (a FinetuneConfig's data keeps its ``synthetic-binary``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    base = cls() if base is None else base
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            section = f" under {where!r}" if where else ""
            raise ValueError(
                f"unknown config key {path!r}.{did_you_mean(key, names)} "
                f"Valid keys{section}: {', '.join(names)}"
            )
        if is_dataclass(hints[key]):
            if not isinstance(value, Mapping):
                raise ValueError(f"{path} must be a mapping, got {value!r}")
            kwargs[key] = _build(hints[key], value, path, getattr(base, key))
        else:
            kwargs[key] = _coerce(hints[key], value, path)
    return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; read it as the float everyone means."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "tasks=[ap,itc]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.lr=1e-3)")
        try:
            value = _scalar(yaml.safe_load(raw)) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ValueError(
                f"override {item!r}: the value is not valid YAML ({problem}); quote it or fix "
                "the brackets (e.g. tasks=[ap,itc])"
            ) from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults <- ``base`` <- YAML file at ``path`` <- ``overrides`` (``key=value``)."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or exc
            raise ValueError(f"config file {path} is not valid YAML: {problem}{where}") from None
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides))
    return _build(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    """Write a config (a dataclass, or its ``to_dict`` mapping) as the run's YAML."""
    mapping = config if isinstance(config, Mapping) else to_dict(config)
    Path(path).write_text(yaml.safe_dump(dict(mapping), sort_keys=False))
