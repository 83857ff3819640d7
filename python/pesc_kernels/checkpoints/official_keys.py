"""Tensor names of the official PESC layout and of ours, and the adapters a checkpoint holds.

Official (Camelidae, Sparsetral, Qwen2idae), for a crafted FFN at module path ``M`` (e.g.
``model.layers.3.mlp``)::

    M.gate_proj.weight, M.up_proj.weight, M.down_proj.weight     the dense FFN, as in the base model
    M.moe_adapter.router.weight                                 [E, d]
    M.moe_adapter.experts.expert_{e}.adapter_down.weight        [r, d]  (nn.ModuleDict naming: wuhy68)
    M.moe_adapter.experts.{e}.adapter_down.weight               [r, d]  (nn.ModuleList naming: serp-ai)
    M.moe_adapter.experts.<...>.adapter_up.weight               [d, r]

Ours (a crafted model's ``state_dict``)::

    M.ffn.gate_proj.weight, ...                                 the dense FFN, wrapped
    M.router.weight [E, d],  M.w_down [E, d, r],  M.w_up [E, r, d]   (input-major: h @ w)

so ``w_down[e] == adapter_down.weight.T`` and ``w_up[e] == adapter_up.weight.T``. Adapter-only
files (``moe_model.bin``) prefix every name with ``base_model.model.`` (peft's wrapping).
:func:`official_adapters` and :func:`our_adapters` find the adapters in a set of names and shapes
and check that they are complete and consistent; :func:`check_adapters` compares them with a model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PEFT_PREFIX = "base_model.model."
EXPERT_NAMING = ("dict", "list")  # experts.expert_{e} (nn.ModuleDict) / experts.{e} (nn.ModuleList)
OUR_SUFFIXES = ("router.weight", "w_down", "w_up")

_ROUTER = re.compile(r"^(?P<module>.+)\.moe_adapter\.router\.weight$")
_EXPERT = re.compile(r"^(?P<module>.+)\.moe_adapter\.experts\.(?P<dict>expert_)?(?P<expert>\d+)"
                     r"\.adapter_(?P<part>down|up)\.weight$")
_OURS = re.compile(r"^(?P<module>.+)\.(?P<suffix>router\.weight|w_down|w_up)$")


def official_router_key(module: str) -> str:
    return f"{module}.moe_adapter.router.weight"


def official_expert_key(module: str, expert: int, part: str, naming: str = "dict") -> str:
    """``part`` is "down" or "up"; ``naming`` "dict" (``expert_{e}``) or "list" (``{e}``)."""
    slot = f"expert_{expert}" if naming == "dict" else str(expert)
    return f"{module}.moe_adapter.experts.{slot}.adapter_{part}.weight"


def strip_peft_prefix(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


@dataclass
class LayerAdapters:
    """The adapters of one crafted FFN found in a checkpoint: E, r, d and where each tensor is."""

    module: str
    num_experts: int
    adapter_dim: int
    hidden_size: int
    router: str  # tensor name
    down: list[str] = field(default_factory=list)  # official: one name per expert; ours: [w_down name]
    up: list[str] = field(default_factory=list)


def official_adapters(shapes: dict[str, tuple[int, ...]], where: str) -> tuple[dict[str, LayerAdapters], list[str]]:
    """Adapters in official naming among ``shapes`` (name -> shape); returns (by module, other names).

    Raises ValueError naming the module when a layer's router or experts are incomplete, when
    experts have inconsistent shapes, or when a ``moe_adapter`` tensor has an unknown name.
    """
    routers: dict[str, str] = {}
    experts: dict[str, dict[tuple[int, str], str]] = {}
    others = []
    for name in shapes:
        if match := _ROUTER.match(name):
            routers[match["module"]] = name
        elif match := _EXPERT.match(name):
            experts.setdefault(match["module"], {})[(int(match["expert"]), match["part"])] = name
        elif ".moe_adapter." in name:
            raise ValueError(f"{where}: tensor {name} is not part of the official PESC layout "
                             "(moe_adapter.router.weight, moe_adapter.experts.<e>.adapter_{down,up}.weight)")
        else:
            others.append(name)
    orphans = sorted(experts.keys() - routers.keys())
    if orphans:
        raise ValueError(f"{where}: layer {orphans[0]} has experts but no router "
                         f"({official_router_key(orphans[0])} is missing)")
    layers = {}
    for module, router in routers.items():
        router_shape = shapes[router]
        if len(router_shape) != 2:
            raise ValueError(f"{where}: {router} has shape {list(router_shape)}; a router weight is "
                             "[num_experts, hidden_size]")
        E, d = router_shape
        found = experts.get(module, {})
        missing = [f"{part} of expert {e}" for e in range(E) for part in ("down", "up") if (e, part) not in found]
        extra = sorted({e for e, _ in found if e >= E})
        if missing or extra:
            detail = f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else ""
            if extra:
                detail += ("; " if missing else "") + f"experts {extra} beyond the router's {E}"
            raise ValueError(f"{where}: layer {module} has a router for {E} experts but its adapters do not match: "
                             f"{detail}")
        r = shapes[found[(0, "down")]][0]
        for e in range(E):
            for part, want in (("down", (r, d)), ("up", (d, r))):
                got = tuple(shapes[found[(e, part)]])
                if got != want:
                    raise ValueError(f"{where}: {found[(e, part)]} has shape {list(got)}; expected {list(want)} "
                                     f"(adapter_dim={r}, hidden_size={d} from expert 0 and the router)")
        layers[module] = LayerAdapters(module, E, r, d, router, [found[(e, "down")] for e in range(E)],
                                       [found[(e, "up")] for e in range(E)])
    return layers, others


def our_adapters(shapes: dict[str, tuple[int, ...]], where: str) -> tuple[dict[str, LayerAdapters], list[str]]:
    """Adapters in our naming (``M.router.weight``, ``M.w_down``, ``M.w_up``); returns (by module, other names)."""
    parts: dict[str, dict[str, str]] = {}
    others = []
    for name in shapes:
        match = _OURS.match(name)
        if match:
            parts.setdefault(match["module"], {})[match["suffix"]] = name
        else:
            others.append(name)
    layers = {}
    for module, found in parts.items():
        missing = [f"{module}.{s}" for s in OUR_SUFFIXES if s not in found]
        if missing:
            raise ValueError(f"{where}: layer {module} is incomplete: {missing} missing")
        router, down, up = (tuple(shapes[found[s]]) for s in OUR_SUFFIXES)
        if len(router) != 2 or len(down) != 3 or len(up) != 3:
            raise ValueError(f"{where}: layer {module} has shapes router {list(router)}, w_down {list(down)}, "
                             f"w_up {list(up)}; expected [E, d], [E, d, r], [E, r, d]")
        E, d = router
        r = down[2]
        if down != (E, d, r) or up != (E, r, d):
            raise ValueError(f"{where}: layer {module} has shapes router {list(router)}, w_down {list(down)}, "
                             f"w_up {list(up)}; expected [E, d], [E, d, r], [E, r, d] with one E, d and r")
        layers[module] = LayerAdapters(module, E, r, d, found["router.weight"], [found["w_down"]], [found["w_up"]])
    return layers, others


def check_adapters(layers: dict[str, LayerAdapters], modules: list[str], *, num_experts: int, adapter_dim: int,
                   hidden_size: int, where: str) -> None:
    """Raise ValueError naming what differs between the checkpoint's adapters and what a model needs."""
    missing = [m for m in modules if m not in layers]
    unexpected = sorted(set(layers) - set(modules))
    if missing or unexpected:
        raise ValueError(f"{where}: the checkpoint has adapters for {len(layers)} layers but the model has "
                         f"{len(modules)} FFNs to craft: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
                         f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    for module in modules:
        layer = layers[module]
        for what, got, want in (("experts (num_experts)", layer.num_experts, num_experts),
                                ("adapter rank (adapter_dim)", layer.adapter_dim, adapter_dim),
                                ("hidden size", layer.hidden_size, hidden_size)):
            if got != want:
                raise ValueError(f"{where}: layer {module} has {got} {what} in the checkpoint but the model "
                                 f"needs {want}")
