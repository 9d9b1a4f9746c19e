"""Run configuration: every trained model is a run, keyed by a stable hash of its full config.

A :class:`RunConfig` composes what is trained on (:class:`mexit.data.DataConfig`), what is trained
(:class:`ModelConfig`) and how (:class:`TrainConfig`). Configs round-trip through plain dicts, so they
load from YAML, take ``key=value`` overrides from the command line and hash stably.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mexit import __version__, fingerprint
from mexit.data import DataConfig

REGIMES: dict[str, tuple[str, ...]] = {
    "disjoint": ("P1", "P3"),
    "joint": ("P2",),
    "mixed": ("P1", "P2"),
}
PHASES: tuple[str, ...] = ("P1", "P2", "P3")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
LOSS_WEIGHTS: tuple[str, ...] = ("auto", "uniform", "linear", "sdn")
P3_LOSSES: tuple[str, ...] = ("ics", "all_heads")
# which state early stopping keeps: always the best one (ours), or the best only after an early stop
# and the last at the epoch cap (the authors' loop; see mexit.train)
STOPPING_RULES: tuple[str, ...] = ("restore-best", "restore-on-stop")
# which part of a block's output gradient equilibrium scales: all of it (ours), or an MSDNet's
# coarsest scale only, with the exits' losses summed (IMTA's code)
EQUILIBRIA: tuple[str, ...] = ("whole-output", "coarsest-scale")
MIXUP_MODES: tuple[str, ...] = ("batch", "pair", "elem")


class ParameterError(ValueError):
    """A parameter (of a notebook, a study or a scoring) is wrong; the message names it and says
    what is allowed."""


@dataclass
class ModelConfig:
    """Arguments of :func:`mexit.models.build` (``num_classes`` and the input come from the data)."""

    backbone: str = "resnet20"
    placement: str | list[int] = "every"
    head: str | None = None  # None: the backbone family's default head
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "sdn"
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False  # start from the library's published weights (tv/ and timm/ backbones)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser, schedule and regularisation of one phase."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    batch_size: int = 128
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_mode: str = "batch"
    clip_grad: float | None = None
    bf16: bool = False

    def validate(self, where: str) -> None:
        _check_choice(f"{where}.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice(f"{where}.schedule", self.schedule, SCHEDULES)
        _check_choice(f"{where}.mixup_mode", self.mixup_mode, MIXUP_MODES)
        if not self.lr > 0:
            raise ValueError(f"{where}.lr must be > 0, got {self.lr}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"{where}.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.batch_size < 1:
            raise ValueError(f"{where}.batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_epochs < 0:
            raise ValueError(f"{where}.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"{where}.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"{where}.mixup and {where}.cutmix must be >= 0")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"{where}.batch_size must be even with mixup/cutmix (they pair samples), got {self.batch_size}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"{where}.clip_grad must be > 0 or null, got {self.clip_grad}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"{where}.momentum must be in [0, 1), got {self.momentum}")


@dataclass
class TrainConfig:
    """How a multi-exit model is trained: a regime (a list of phases) and their budgets.

    ``regime`` names one of :data:`REGIMES`; ``phases`` overrides it with any list of ``P1``
    (backbone alone, final head's loss), ``P2`` (backbone and all ICs together) and ``P3`` (ICs
    only, backbone frozen). ``epochs`` is the maximum epoch count of every phase, one count per
    phase of the list (:func:`split_epochs` divides a fixed budget for the phase-length ablation),
    or a count per phase name, ``{P1: 30, P2: 20, P3: 20}``, which holds for every regime (a
    backbone that needs longer than the ICs to converge).
    ``phase_optim`` overrides optimiser fields per phase, e.g. ``{"P2": {"lr": 0.02}}``.
    ``patience`` enables the paper's early stopping (evaluations without any head improving);
    ``None`` trains for the full epoch count and keeps the last state.
    ``p3_loss`` is what P3's weighted mean runs over: ``ics`` (ours: the ICs it trains) or
    ``all_heads`` (the authors': the frozen final head's constant term too, so each IC weighs 1/H
    of H heads under uniform weights instead of 1/(H-1)).
    ``equilibrium`` is how ``gradient_equilibrium`` (Li et al., ICCV 2019) applies in the phases
    training backbone and ICs together (without it, it does nothing): ``whole-output`` (ours), the
    gradient scaling on a block's whole output and the loss the weighted mean; or ``coarsest-scale``
    (IMTA's code's), the scaling on MSDNet's coarsest scale only (on other backbones, whose blocks
    output one scale, as ``whole-output``)
    and the loss the sum of the exits' losses (the weighted mean times the number of exits in it).
    ``stopping`` is the early-stopping rule (:mod:`mexit.train`): ``restore-best`` (ours) or
    ``restore-on-stop`` (their code's: P1 evaluated every epoch, ties never count, every computed
    head tracked, the last state kept when the epoch cap ends a phase, and without ``patience``
    neither a validation split nor any evaluation during training).
    ``max_steps`` ends every phase after that many optimiser steps, whatever its epoch cap (the
    schedule still runs over the cap), and ``eval_batches`` lets every evaluation (early stopping's,
    and the stored validation and test logits) read only the first that many batches of its split:
    a smoke run (:mod:`mexit.smoke`) that goes through every step of the real code path in seconds.
    ``None`` (the default) for both: no such limit.
    ``channels_last`` keeps the model's 4-D weights, and so the feature maps of convolutional
    backbones, in channels-last memory order: the same model, other rounding, and a ResNet-20
    training step about 25% faster on a CPU (``benchmarks/multiexit_speed.py``).
    """

    regime: str = "mixed"
    phases: list[str] | None = None
    epochs: int | list[int] | dict[str, int] = 20
    optim: OptimConfig = field(default_factory=OptimConfig)
    phase_optim: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_weights: str = "auto"
    p3_loss: str = "ics"
    gradient_equilibrium: bool = False
    equilibrium: str = "whole-output"
    patience: int | None = None
    stopping: str = "restore-best"
    eval_every: int | None = None
    eval_batch_size: int = 512
    num_workers: int = 0
    dominance_every: int = 0
    channels_last: bool = True
    max_steps: int | None = None
    eval_batches: int | None = None
    seed: int = 0

    @property
    def phase_list(self) -> tuple[str, ...]:
        return tuple(self.phases) if self.phases is not None else REGIMES[self.regime]

    @property
    def phase_epochs(self) -> tuple[int, ...]:
        if isinstance(self.epochs, int):
            return (self.epochs,) * len(self.phase_list)
        if isinstance(self.epochs, Mapping):
            return tuple(self.epochs.get(phase, 0) for phase in self.phase_list)
        return tuple(self.epochs)

    @property
    def holds_out_validation(self) -> bool:
        """Whether a validation split is carved out of train: always under our rule; under the
        authors' only when early stopping is on (else every training image trains)."""
        return self.stopping == "restore-best" or self.patience is not None

    def optim_for(self, phase_index: int) -> OptimConfig:
        """The optimiser settings of one phase: the shared ones with that phase's overrides."""
        overrides = self.phase_optim.get(self.phase_list[phase_index], {})
        return dataclasses.replace(self.optim, **overrides)

    def validate(self) -> None:
        if self.phases is None:
            _check_choice("train.regime", self.regime, tuple(REGIMES))
        else:
            if not self.phases:
                raise ValueError("train.phases must list at least one phase of " + ", ".join(PHASES))
            for phase in self.phases:
                _check_choice("train.phases", phase, PHASES)
        if isinstance(self.epochs, Mapping):
            for name in self.epochs:
                _check_choice("train.epochs phase", name, PHASES)
            missing = [phase for phase in self.phase_list if phase not in self.epochs]
            if missing:
                raise ValueError(f"train.epochs gives no count for phases {missing} of {list(self.phase_list)}")
        epochs = self.phase_epochs
        if len(epochs) != len(self.phase_list):
            raise ValueError(
                f"train.epochs has {len(epochs)} entries for {len(self.phase_list)} phases {self.phase_list}"
            )
        counts = list(self.epochs.values()) if isinstance(self.epochs, Mapping) else epochs
        if any(not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in counts):
            raise ValueError(f"train.epochs must be positive integers, got {self.epochs}")
        for name in self.phase_optim:
            _check_choice("train.phase_optim", name, PHASES)
            unknown = set(self.phase_optim[name]) - {f.name for f in dataclasses.fields(OptimConfig)}
            if unknown:
                raise ValueError(f"train.phase_optim.{name} has unknown fields {sorted(unknown)}")
        for index, phase in enumerate(self.phase_list):
            self.optim_for(index).validate(f"train.optim[{phase}]")
        _check_choice("train.loss_weights", self.loss_weights, LOSS_WEIGHTS)
        _check_choice("train.p3_loss", self.p3_loss, P3_LOSSES)
        _check_choice("train.equilibrium", self.equilibrium, EQUILIBRIA)
        _check_choice("train.stopping", self.stopping, STOPPING_RULES)
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience must be >= 1 (or null to disable), got {self.patience}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"train.eval_every must be >= 1 (or null), got {self.eval_every}")
        if self.dominance_every < 0:
            raise ValueError(f"train.dominance_every must be >= 0, got {self.dominance_every}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        for name in ("max_steps", "eval_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"train.{name} must be >= 1 (or null for no limit), got {value}")
        if self.eval_batch_size < 1:
            raise ValueError(f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")

    def check_world_size(self, world_size: int) -> None:
        """Check that every phase's batch splits evenly over ``world_size`` processes (and in pairs for mixup)."""
        for index, phase in enumerate(self.phase_list):
            optim = self.optim_for(index)
            per_process, rest = divmod(optim.batch_size, world_size)
            if rest:
                raise ValueError(
                    f"train.optim[{phase}].batch_size {optim.batch_size} must be a multiple of the {world_size} processes"
                )
            if (optim.mixup > 0 or optim.cutmix > 0) and per_process % 2:
                raise ValueError(
                    f"train.optim[{phase}].batch_size {optim.batch_size} gives {per_process} samples per process; "
                    "mixup/cutmix need an even number"
                )


@dataclass
class RunConfig:
    """Everything that determines a trained run; :meth:`key` names it in the run store."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Check every parameter that can be checked without building anything heavy."""
        from mexit import data, models

        _check_types(self.data, "data")
        _check_types(self.model, "model")
        _check_types(self.train, "train")
        _check_types(self.train.optim, "train.optim")
        data.validate(self.data)
        m = self.model
        models.validate(
            m.backbone, placement=m.placement, head=m.head, head_kwargs=m.head_kwargs, method=m.method,
            method_kwargs=m.method_kwargs, pretrained=m.pretrained, backbone_kwargs=m.backbone_kwargs,
        )
        if m.checkpoint is not None and not Path(m.checkpoint).is_file():
            raise ValueError(f"model.checkpoint={m.checkpoint!r} is not a file")
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        unknown = set(values) - {"data", "model", "train"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; allowed: data, model, train")
        train = dict(values.get("train", {}))
        optim = OptimConfig(**_known(OptimConfig, train.pop("optim", {}), "train.optim"))
        return cls(
            data=DataConfig(**_known(DataConfig, values.get("data", {}), "data")),
            model=ModelConfig(**_known(ModelConfig, values.get("model", {}), "model")),
            train=TrainConfig(optim=optim, **_known(TrainConfig, train, "train")),
        )

    def with_overrides(self, overrides: Sequence[str]) -> RunConfig:
        """A copy with ``section.field=value`` overrides applied (values parsed as YAML)."""
        values = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form section.field=value")
            dotted, raw = item.split("=", 1)
            *parents, leaf = dotted.split(".")
            node = values
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"override {dotted!r}: {part!r} is not a config section")
                node = node[part]
            node[leaf] = _parse_value(raw)
        return RunConfig.from_dict(values)

    def without_weights(self) -> RunConfig:
        """The same model with no initial weights to load (``model.pretrained`` off, no
        ``model.checkpoint``): what a count of MACs, which depend on the architecture alone, builds
        where the weights are not."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, pretrained=False, checkpoint=None))

    def key(self) -> str:
        """Stable 12-hex-digit hash of the config, the mexit version, the training code's
        fingerprint and the versions of torch, torchvision and timm (:func:`code_identity`).

        Where the data lives (``data.data_root``, ``data.download``) is left out: the same run on
        another machine or mount has the same key.
        """
        config = {**self.to_dict(), "data": data_identity(self.data), "model": model_identity(self.model)}
        return stable_hash({"config": config, **code_identity()})


def model_identity(config: ModelConfig) -> dict[str, Any]:
    """The fields of a model config that change the model: the checkpoint by the SHA-256 of its
    file (not its path), published weights by their name and tag, and a network of the user's own
    (``py/<module>:<function>``) by its module's code (:func:`mexit.models.custom.source_identity`)."""
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpoint"}
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        identity["checkpoint_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else config.checkpoint
    if config.backbone.startswith("py/"):  # a network of the user's own: keyed by its module's code, read without importing it
        from mexit.models.custom import source_identity

        identity["backbone_source"] = source_identity(config.backbone)
    if config.pretrained:  # the models (torch, timm) are imported only where published weights are named
        from mexit.models.backbones import pretrained_tag

        identity["pretrained"] = pretrained_tag(config.backbone)
    return identity


def data_identity(config: DataConfig) -> dict[str, Any]:
    """The fields of a data config that change the data, not where it is read from."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("data_root", "download")}


TRAINING_ROOTS: tuple[str, ...] = ("mexit.pipeline",)
"""Where the training path starts: the code that decides a run's weights and what it stores is this
module and every ``mexit`` module it imports (:func:`mexit.fingerprint.closure`), found from the
imports, never listed by hand."""


def code_fingerprint() -> str:
    """12 hex digits naming the training path's code (:data:`TRAINING_ROOTS`,
    :func:`mexit.fingerprint.code_fingerprint`): each module's syntax tree without its docstrings,
    so that an edit of what the code does keys new runs instead of reusing runs trained by other
    code, and an edit of its documentation does not."""
    return fingerprint.code_fingerprint(TRAINING_ROOTS)


TRAINING_LIBRARIES: tuple[str, ...] = ("torch", "torchvision", "timm")
"""The libraries whose code builds and trains a model (layers, initialisations, timm's and
torchvision's architectures): their versions are part of every key, as mexit's own code is."""


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """The installed version of each of :data:`TRAINING_LIBRARIES` (read from the installed
    distributions, none imported); the lock (constraints.txt) pins them."""
    from importlib.metadata import version

    return {name: version(name) for name in TRAINING_LIBRARIES}


def code_identity() -> dict[str, Any]:
    """What run and phase keys hold of the code: the package version, :func:`code_fingerprint`, and
    the versions of the libraries a model's weights depend on (:func:`library_versions`): a run
    trained under another torch or timm is not reused as if the same code had trained it."""
    return {"mexit": __version__, "code": code_fingerprint(), "libraries": library_versions()}


def stable_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_epochs(total: int, fractions: Sequence[float]) -> list[int]:
    """Split a fixed epoch budget between phases, e.g. ``split_epochs(200, [0.25, 0.75]) == [50, 150]``."""
    if total < len(fractions):
        raise ValueError(f"total epochs {total} cannot give every one of {len(fractions)} phases an epoch")
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    epochs = [max(1, round(total * f)) for f in fractions]
    epochs[-1] = total - sum(epochs[:-1])
    if epochs[-1] < 1:
        raise ValueError(f"fractions {list(fractions)} leave no epoch for the last phase of {total}")
    return epochs


def _parse_value(raw: str) -> Any:
    """A command-line value as YAML, with numbers like ``1e-3`` (a string in YAML 1.1) as floats."""
    import yaml

    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _check_types(values: Any, section: str) -> None:
    """Check each field whose annotation is made of int, float, str, bool, None, list or dict."""
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        allowed: tuple[type, ...] = ()
        for part in str(f.type).replace(" ", "").split("|"):
            base = part.split("[", 1)[0]
            allowed += _SIMPLE_TYPES.get(base, (list,) if base == "list" else (dict,) if base == "dict" else ())
        if not allowed:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{section}.{f.name} must be of type {f.type}, got {value!r}")
        if not _finite(value):
            raise ValueError(f"{section}.{f.name} must hold finite numbers only, got {value!r}")


def _finite(value: Any) -> bool:
    """No inf or nan anywhere in ``value`` (a number, or lists and mappings of them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


OPTION_ALIASES: dict[str, dict[str, str]] = {
    "data.augment": {"ours": "crop-flip", "authors": "trivial-augment"},
    "train.stopping": {"ours": "restore-best", "authors": "restore-on-stop"},
    "train.equilibrium": {"ours": "whole-output", "imta": "coarsest-scale"},
}
"""Earlier spellings of option values, by ``section.field``, still read (from stored configs, YAML
and overrides) as the names that say what they do."""


def _known(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown {section} fields {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return {name: _unaliased(f"{section}.{name}", value) for name, value in values.items()}


def _unaliased(option: str, value: Any) -> Any:
    """``value`` under its current name, where it is an earlier spelling (:data:`OPTION_ALIASES`)."""
    return OPTION_ALIASES.get(option, {}).get(value, value) if isinstance(value, str) else value


CONFIG_DIR = Path(__file__).parent / "configs"
PROFILE_DIR = Path(__file__).parent / "profiles"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """A run config from a shipped name (see :func:`shipped_configs`) or a YAML file, with overrides."""
    import yaml

    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(f"config {name_or_path!r} is neither a file nor one of: {', '.join(shipped_configs())}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ValueError(f"config file {path} is not valid YAML: {detail}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping with data, model and train sections")
    return RunConfig.from_dict(values).with_overrides(overrides)


def regime_configs(
    base: RunConfig, regimes: Sequence[str], seeds: Sequence[int]
) -> list[RunConfig]:
    """One config per (regime, seed), everything else as in ``base``."""
    for regime in regimes:
        _check_choice("regime", regime, tuple(REGIMES))
    return [
        dataclasses.replace(base, train=dataclasses.replace(base.train, regime=regime, phases=None, seed=seed))
        for seed in seeds
        for regime in regimes
    ]
