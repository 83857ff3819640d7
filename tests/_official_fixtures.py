"""Official PESC checkpoints written from scratch for the tests, and an independent official forward.

:func:`write_official` writes what a Camelidae / Sparsetral / Qwen2idae release looks like: a stock
dense Llama / Mistral / Qwen2 (random weights) plus, in every decoder layer, a router and E experts
under the official names, all random and non-zero (``adapter_up`` too); the official config fields;
``nn.ModuleDict`` (``experts.expert_{e}``) or ``nn.ModuleList`` (``experts.{e}``) naming; safetensors or
``.bin``; one file or several shards (each cut in the middle of a layer's experts, so that a
layer spans two shards).
It uses neither pesc_kernels' writers nor its key mapping, so the import is tested against the
layout itself.

:func:`official_forward` is the official models' forward written out in float64 from those
tensors (RMSNorm, RoPE, grouped-query causal attention, SwiGLU FFN, and the PESC mixture
``y = z + sum_j softmax(top-k router logits)_j * scaling * up_e(gelu(down_e(z)))`` with the router
reading the FFN input), sharing no code with transformers or pesc_kernels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

BASES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
         "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
BASE_OF = {"camelidae": "llama", "sparsetral": "mistral", "qwen2idae": "qwen2"}
AUTO_MAP = {
    "camelidae": {"AutoConfig": "configuration_camelidae.CamelidaeConfig",
                  "AutoModelForCausalLM": "modeling_camelidae.LlamaForCausalLM"},
    "sparsetral": {"AutoConfig": "configuration_sparsetral.SparsetralConfig",
                   "AutoModelForCausalLM": "modeling_sparsetral.MistralForCausalLM"},
    "qwen2idae": {"AutoConfig": "configuration_qwen2idae.Qwen2idaeConfig",
                  "AutoModelForCausalLM": "modeling_qwen2idae.Qwen2ForCausalLM"},
}
SIZES = dict(vocab_size=96, hidden_size=48, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


@dataclass
class Official:
    directory: Path
    config: dict  # config.json as written
    tensors: dict[str, torch.Tensor]  # every tensor, official names
    dense: dict[str, torch.Tensor]  # the stock dense model's tensors (stock names)
    adapters: dict[int, tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]  # layer -> router, downs, ups


def expert_key(layer: int, expert: int, part: str, naming: str) -> str:
    slot = f"expert_{expert}" if naming == "dict" else str(expert)
    return f"model.layers.{layer}.mlp.moe_adapter.experts.{slot}.adapter_{part}.weight"


def router_key(layer: int) -> str:
    return f"model.layers.{layer}.mlp.moe_adapter.router.weight"


def official_tensors(experts: int, rank: int, seed: int, base: str = "llama", dtype=torch.float32):
    """``(dense stock tensors, {layer: (router, downs, ups)})``, all random and non-zero."""
    torch.manual_seed(seed)
    config_cls, model_cls = BASES[base]
    dense = {k: v.detach().clone().to(dtype) for k, v in model_cls(config_cls(**SIZES)).state_dict().items()}
    for name in dense:
        if name.endswith("norm.weight"):  # not all ones, so a misplaced norm would show
            dense[name] = (1 + 0.1 * torch.randn(dense[name].shape)).to(dtype)
        elif name.endswith(".bias"):  # Qwen2's q/k/v biases start at zero
            dense[name] = (0.1 * torch.randn(dense[name].shape)).to(dtype)
    d = SIZES["hidden_size"]
    adapters = {}
    for layer in range(SIZES["num_hidden_layers"]):
        router = (0.5 * torch.randn(experts, d)).to(dtype)
        downs = [(0.2 * torch.randn(rank, d)).to(dtype) for _ in range(experts)]
        ups = [(0.2 * torch.randn(d, rank)).to(dtype) for _ in range(experts)]
        adapters[layer] = (router, downs, ups)
    return dense, adapters


def write_official(directory, *, flavor: str = "camelidae", model_type: str | None = None, naming: str = "dict",
                   shards: int = 1, fmt: str = "safetensors", experts: int = 4, topk: int = 2, rank: int = 8,
                   scaling: float = 0.5, dtype=torch.float32, seed: int = 0, config: dict | None = None,
                   drop: tuple[str, ...] = ()) -> Official:
    """Write an official checkpoint directory; ``config`` overrides fields (None removes one), ``drop``
    leaves out tensors (names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = BASE_OF[flavor]
    dense, adapters = official_tensors(experts, rank, seed, base, dtype)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in dense.items():
        tensors[name] = tensor
        if name.endswith("mlp.down_proj.weight"):  # the layer's MoE right after its FFN, as their state dicts order it
            layer = int(name.split(".")[2])
            router, downs, ups = adapters[layer]
            tensors[router_key(layer)] = router
            for e in range(experts):
                tensors[expert_key(layer, e, "down", naming)] = downs[e]
                tensors[expert_key(layer, e, "up", naming)] = ups[e]
    for name in drop:
        del tensors[name]
    written = {"model_type": model_type or flavor, "architectures": [BASES[base][1].__name__],
               "auto_map": AUTO_MAP[flavor], **SIZES, "hidden_act": "silu", "rope_theta": 10000.0,
               "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."),
               "num_experts": experts, "topk": topk, "adapter_dim": rank, "moe_scaling": scaling,
               "moe_dtype": "bfloat16", "output_router_logits": False}
    if flavor == "sparsetral":
        written.update(adapter_dropout=0.05, router_aux_loss_coef=0.02, sliding_window=None)
    for key, value in (config or {}).items():
        if value is None:
            written.pop(key, None)
        else:
            written[key] = value
    (directory / "config.json").write_text(json.dumps(written, indent=2))
    names = list(tensors)
    routers = [names.index(router_key(layer)) for layer in range(SIZES["num_hidden_layers"])
               if router_key(layer) in tensors]
    if shards - 1 > len(routers):
        raise ValueError(f"at most {len(routers) + 1} shards: each cut goes through one layer's experts")
    cuts = [routers[i] + 1 + experts for i in range(shards - 1)]  # after expert e's down/up pairs, e < E/2
    _write_weights(directory, tensors, cuts, fmt)
    return Official(directory, written, tensors, dense, adapters)


def _write_weights(directory: Path, tensors: dict[str, torch.Tensor], cuts: list[int], fmt: str) -> None:
    names = list(tensors)
    bounds = [0, *cuts, len(names)]
    chunks = [names[a:b] for a, b in zip(bounds, bounds[1:])]
    suffix = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    files = ([f"{stem}.{suffix}"] if len(chunks) == 1
             else [f"{stem}-{i + 1:05d}-of-{len(chunks):05d}.{suffix}" for i in range(len(chunks))])
    weight_map = {}
    for file_name, chunk in zip(files, chunks):
        part = {name: tensors[name].contiguous() for name in chunk}
        if fmt == "safetensors":
            save_file(part, str(directory / file_name), metadata={"format": "pt"})
        else:
            torch.save(part, directory / file_name)
        weight_map.update({name: file_name for name in chunk})
    if len(chunks) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (directory / f"{stem}.{suffix}.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_moe_model_bin(path, adapters, naming: str = "dict", prefix: str = "base_model.model."):
    """What the official training script saves: every parameter named ``*adapter*``, peft-prefixed."""
    state = {}
    for layer, (router, downs, ups) in adapters.items():
        state[prefix + router_key(layer)] = router
        for e, (down, up) in enumerate(zip(downs, ups)):
            state[prefix + expert_key(layer, e, "down", naming)] = down
            state[prefix + expert_key(layer, e, "up", naming)] = up
    torch.save(state, path)
    return state


# ------------------------------------------------------------------------------ independent forward
def official_forward(official: Official, input_ids: torch.Tensor, *, rope_theta: float = 10000.0,
                     qkv_bias: bool = False) -> torch.Tensor:
    """Logits [B, S, V] in float64 of the official model, written out from its tensors."""
    c = official.config
    t = {k: v.double() for k, v in official.dense.items()}
    d, heads, kv_heads, eps = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    head_dim, k, scaling = d // heads, c["topk"], c["moe_scaling"]
    batch, length = input_ids.shape

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def linear(x, prefix):
        y = x @ t[prefix + ".weight"].T
        return y + t[prefix + ".bias"] if qkv_bias and prefix + ".bias" in t else y

    inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(x):
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    h = t["model.embed_tokens.weight"][input_ids]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        a = rms(h, t[f"{p}.input_layernorm.weight"])
        q = linear(a, f"{p}.self_attn.q_proj").view(batch, length, heads, head_dim).transpose(1, 2)
        key = linear(a, f"{p}.self_attn.k_proj").view(batch, length, kv_heads, head_dim).transpose(1, 2)
        value = linear(a, f"{p}.self_attn.v_proj").view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, key = rope(q), rope(key)
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
        weights = torch.softmax(q @ key.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1)
        h = h + linear((weights @ value).transpose(1, 2).reshape(batch, length, d), f"{p}.self_attn.o_proj")

        x = rms(h, t[f"{p}.post_attention_layernorm.weight"])
        z = linear(F.silu(linear(x, f"{p}.mlp.gate_proj")) * linear(x, f"{p}.mlp.up_proj"), f"{p}.mlp.down_proj")
        router, downs, ups = (official.adapters[layer][0].double(), [w.double() for w in official.adapters[layer][1]],
                              [w.double() for w in official.adapters[layer][2]])
        top, chosen = torch.topk(x @ router.T, k, dim=-1)
        gates = torch.softmax(top, dim=-1)
        # [B, S, E, d]
        every = torch.stack([scaling * (F.gelu(z @ down.T) @ up.T) for down, up in zip(downs, ups)], dim=-2)
        picked = torch.gather(every, 2, chosen[..., None].expand(*chosen.shape, d))  # [B, S, k, d]
        h = h + z + (gates[..., None] * picked).sum(dim=2)
    return rms(h, t["model.norm.weight"]) @ t["lm_head.weight"].T
