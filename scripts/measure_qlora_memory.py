#!/usr/bin/env python
"""Peak memory of one LoRA + PESC training step on the CPU: NF4 (4-bit) base against an fp32 base.

    PYTHONPATH=python python scripts/measure_qlora_memory.py [--tokens 2x128] [--modes fp32,nf4-fp32,nf4-bf16]

It saves a random dense Llama once (fp32), then, each in a fresh process: loads it as the base (fp32;
NF4 with fp32 compute; NF4 with bf16 compute and bf16 embeddings, routers and adapters, the paper's
QLoRA setting), adds LoRA on every projection (peft) and crafts PESC (8 experts, k=2, rank 64),
runs one warm-up step (forward, backward, AdamW) and then measures a second one: its peak resident
set size (the kernel's VmHWM, reset just before the step by writing 5 to /proc/self/clear_refs) and
the resident size just before it. Before that, every parameter is copied into the process's own
memory (transformers 5 leaves weights as views of the memory-mapped checkpoint, whose touched pages
count in the resident set: all of the fp32 file even for the 4-bit model, which keeps the mapping
alive through its unquantised embeddings), and glibc's malloc_trim returns freed heap to the system,
so the resident size is the live memory of the run. Peak RSS includes the weights, activations, gradients and optimizer
state, and the process's own baseline (torch and transformers, printed too). On CPUs without native
bf16 matrix units torch's bf16 matmul is far slower than fp32, so the bf16 mode may need small
--tokens. Linux / glibc only (clear_refs, /proc/self/status, malloc_trim).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {  # name -> (4-bit, dtype of compute and of the non-quantised weights, description)
    "fp32": (False, "float32", "fp32 base"),
    "nf4-fp32": (True, "float32", "NF4 base, fp32 compute"),
    "nf4-bf16": (True, "bfloat16", "NF4 base, bf16 compute and adapters (QLoRA)"),
}


def status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def one_mode(base_dir: str, four_bit: bool, dtype_name: str, batch: int, length: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    import pesc_kernels

    baseline = status_kb("VmRSS")
    dtype = getattr(torch, dtype_name)
    kwargs = {"dtype": dtype}
    if four_bit:
        kwargs.update(device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True))
    model = LlamaForCausalLM.from_pretrained(base_dir, **kwargs)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    pesc_kernels.craft(model, pesc_kernels.PESCConfig(num_experts=8, top_k=2, adapter_dim=64))
    for parameter in pesc_kernels.pesc_parameters(model):
        parameter.data = parameter.data.to(dtype)
    with torch.no_grad():  # own every weight: drop the views of the memory-mapped checkpoint (see above)
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
    base_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not p.requires_grad)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    model.train()

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: optimizer state and allocator pools exist from here on
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, mapped = status_kb("VmRSS"), status_kb("RssFile")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    return {"baseline_rss_mb": baseline / 1024, "rss_before_step_mb": before / 1024, "file_backed_mb": mapped / 1024,
            "step_peak_rss_mb": status_kb("VmHWM") / 1024, "frozen_weights_mb": base_bytes / 2**20,
            "trainable_params": sum(p.numel() for p in trainable), "loss": loss, "step_seconds": seconds,
            "process_peak_rss_mb": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", default="2x128", help="batch x length")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--child", nargs=3, metavar=("BASE", "FOUR_BIT", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch, length = (int(x) for x in args.tokens.split("x"))
    if args.child:
        result = one_mode(args.child[0], args.child[1] == "1", args.child[2], batch, length)
        import resource

        result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as base_dir:
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.heads, vocab_size=args.vocab,
                             max_position_embeddings=max(length, 128), tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
        print(f"base: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters "
              f"(hidden {args.hidden}, FFN {args.intermediate}, {args.layers} layers, vocab {args.vocab}); "
              f"step on {batch}x{length} tokens, LoRA r=8 on all projections + PESC E=8 k=2 r=64")
        model.save_pretrained(base_dir)
        del model
        print("| base | frozen weights MB | RSS before step MB (of it file-backed) | step peak RSS MB | "
              "process peak RSS MB | baseline RSS MB | step s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.modes.split(","):
            four_bit, dtype, description = MODES[name]
            out = subprocess.run([sys.executable, __file__, "--tokens", args.tokens, "--child", base_dir,
                                  "1" if four_bit else "0", dtype], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {description} | {r['frozen_weights_mb']:.0f} | "
                  f"{r['rss_before_step_mb']:.0f} ({r['file_backed_mb']:.0f}) | "
                  f"{r['step_peak_rss_mb']:.0f} | {r['process_peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | "
                  f"{r['step_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
