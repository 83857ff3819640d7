#!/usr/bin/env python
"""Write a synthetic official PESC checkpoint of realistic size, to measure checkpoint conversion.

    python scripts/synthetic_pesc_checkpoint.py OUT [--flavor camelidae] [--layers 16] [--shard-gb 3]
    /usr/bin/time -v python -m pesc_kernels convert OUT OUT-pesc --to pesc      # "Maximum resident set size"

The default sizes are Llama-2-7B's (hidden 4096, FFN 11008, 32000 tokens) with Camelidae's MoE
(8 experts, rank 512) over ``--layers`` decoder layers, random bf16 values, in safetensors shards of
about ``--shard-gb`` GB with an index, the official tensor names (nn.ModuleDict experts for
camelidae, nn.ModuleList for sparsetral) and an official config.json. One shard is held in memory
while it is written. Nothing here is a real model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def layer_tensors(layer: int, args) -> dict[str, tuple[int, ...]]:
    d, f, kv = args.hidden, args.intermediate, args.hidden // args.heads * args.kv_heads
    p = f"model.layers.{layer}"
    shapes = {f"{p}.input_layernorm.weight": (d,), f"{p}.self_attn.q_proj.weight": (d, d),
              f"{p}.self_attn.k_proj.weight": (kv, d), f"{p}.self_attn.v_proj.weight": (kv, d),
              f"{p}.self_attn.o_proj.weight": (d, d), f"{p}.post_attention_layernorm.weight": (d,),
              f"{p}.mlp.gate_proj.weight": (f, d), f"{p}.mlp.up_proj.weight": (f, d),
              f"{p}.mlp.down_proj.weight": (d, f),
              f"{p}.mlp.moe_adapter.router.weight": (args.experts, d)}
    for e in range(args.experts):
        slot = f"expert_{e}" if args.flavor == "camelidae" else str(e)
        shapes[f"{p}.mlp.moe_adapter.experts.{slot}.adapter_down.weight"] = (args.rank, d)
        shapes[f"{p}.mlp.moe_adapter.experts.{slot}.adapter_up.weight"] = (d, args.rank)
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--flavor", choices=("camelidae", "sparsetral"), default="camelidae")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--rank", type=int, default=512)
    parser.add_argument("--shard-gb", type=float, default=3.0)
    args = parser.parse_args()

    shapes = {"model.embed_tokens.weight": (args.vocab, args.hidden)}
    for layer in range(args.layers):
        shapes.update(layer_tensors(layer, args))
    shapes.update({"model.norm.weight": (args.hidden,), "lm_head.weight": (args.vocab, args.hidden)})
    limit = int(args.shard_gb * 1e9)
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    args.out.mkdir(parents=True, exist_ok=False)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for file_name, names in zip(files, shards):
        tensors = {n: torch.empty(shapes[n], dtype=torch.bfloat16).normal_(0, 0.02, generator=generator) for n in names}
        save_file(tensors, str(args.out / file_name), metadata={"format": "pt"})
        weight_map.update({n: file_name for n in names})
        print(f"wrote {file_name}: {sum(t.numel() for t in tensors.values()) * 2 / 1e9:.2f} GB")
        del tensors
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    base = "llama" if args.flavor == "camelidae" else "mistral"
    architecture = "LlamaForCausalLM" if base == "llama" else "MistralForCausalLM"
    config = {"model_type": args.flavor, "architectures": [architecture],
              "hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
              "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "num_experts": args.experts, "topk": 2,
              "adapter_dim": args.rank, "moe_scaling": 0.25, "moe_dtype": "bfloat16", "output_router_logits": False}
    if args.flavor == "sparsetral":
        config.update(adapter_dropout=0.0, router_aux_loss_coef=0.01, sliding_window=None)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"{args.out}: {len(files)} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
