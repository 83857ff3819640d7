"""PESCConfig: the settings of a PESC layer and of a crafted model (docs/design.md, "The PESC layer").

One config describes every crafted FFN of a model: E experts, top-k routing, rank-r adapters
``A_e(z) = scaling * act(dropout(z) @ Wd[e]) @ Wu[e]``, the loss coefficients used in training and
the names of the FFN modules to wrap. It round-trips through ``to_dict``/``from_dict`` and JSON files,
and is stored in ``model.config.pesc`` by :func:`pesc_kernels.craft`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from .reference.activations import ACTIVATIONS

MAX_EXPERTS = 1024  # the routing and permutation ops support 1 <= E <= 1024
MAX_ADAPTER_DIM = 1024  # the adapter op supports 1 <= r <= 1024


@dataclass
class PESCConfig:
    """Settings of a PESC mixture of adapters (defaults: the PESC public training script).

    Attributes:
        num_experts: E, experts per crafted FFN (1..1024).
        top_k: k, experts per token (1..E).
        adapter_dim: r, the adapters' bottleneck rank (1..1024).
        activation: adapter nonlinearity: ``gelu`` (exact, as the paper), ``gelu_tanh``, ``silu``,
            ``relu`` or ``identity``.
        scaling: multiplies every adapter's output.
        adapter_dropout: dropout probability on the adapters' input (the FFN output) in training.
        aux_loss_coef: weight of the Switch load-balancing loss (summed over layers) in the loss.
        z_loss_coef: weight of the router z-loss (summed over layers) in the loss.
        normalize_top_k: renormalise the k selected routing weights to sum to 1 (PESC does).
        target_modules: names of the FFN modules to wrap; a module is wrapped when its qualified
            name equals one of them or ends with ``"." + name`` (default: every ``mlp``).
    """

    num_experts: int = 8
    top_k: int = 2
    adapter_dim: int = 64
    activation: str = "gelu"
    scaling: float = 1.0
    adapter_dropout: float = 0.0
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    normalize_top_k: bool = True
    target_modules: list[str] = field(default_factory=lambda: ["mlp"])

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        elif isinstance(self.target_modules, (list, tuple)):
            self.target_modules = list(self.target_modules)
        self.validate()
        for name in ("scaling", "adapter_dropout", "aux_loss_coef", "z_loss_coef"):
            setattr(self, name, float(getattr(self, name)))

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def camelidae(cls, **overrides) -> "PESCConfig":
        """Camelidae (the released PESC models): E=8, k=2, r=512, scaling 0.25, dropout 0.1."""
        return cls(**{**dict(num_experts=8, top_k=2, adapter_dim=512, scaling=0.25, adapter_dropout=0.1), **overrides})

    @classmethod
    def pesc_script(cls, **overrides) -> "PESCConfig":
        """The PESC repository's public training script: E=8, k=2, r=64, scaling 1.0."""
        return cls(**{**dict(num_experts=8, top_k=2, adapter_dim=64, scaling=1.0), **overrides})

    @classmethod
    def sparsetral(cls, **overrides) -> "PESCConfig":
        """Sparsetral: E=16, k=4, r=512, scaling 1.0."""
        return cls(**{**dict(num_experts=16, top_k=4, adapter_dim=512, scaling=1.0), **overrides})

    # -------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError (naming the field) if any setting is out of range."""
        _check_int("num_experts", self.num_experts, 1, MAX_EXPERTS)
        _check_int("top_k", self.top_k, 1, MAX_EXPERTS)
        if self.top_k > self.num_experts:
            raise ValueError(f"PESCConfig: top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        _check_int("adapter_dim", self.adapter_dim, 1, MAX_ADAPTER_DIM)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"PESCConfig: activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        _check_float("scaling", self.scaling)
        _check_float("adapter_dropout", self.adapter_dropout)
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"PESCConfig: adapter_dropout must be in [0, 1); got {self.adapter_dropout}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            value = getattr(self, name)
            _check_float(name, value)
            if value < 0:
                raise ValueError(f"PESCConfig: {name} must be >= 0; got {value}")
        if not isinstance(self.normalize_top_k, bool):
            raise ValueError(f"PESCConfig: normalize_top_k must be a bool; got {self.normalize_top_k!r}")
        if (not isinstance(self.target_modules, list) or not self.target_modules
                or not all(isinstance(t, str) and t and not t.startswith(".") for t in self.target_modules)):
            raise ValueError("PESCConfig: target_modules must be a non-empty list of module names such as "
                             f"['mlp']; got {self.target_modules!r}")

    # ----------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PESCConfig":
        if not isinstance(data, dict):
            raise ValueError(f"PESCConfig.from_dict expects a dict; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PESCConfig: unknown fields {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PESCConfig":
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"PESCConfig: {path} is not valid JSON ({error})") from None
        return cls.from_dict(data)


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"PESCConfig: {name} must be an int; got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"PESCConfig: {name} must be in [{low}, {high}]; got {value}")


def _check_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"PESCConfig: {name} must be a finite number; got {value!r}")
