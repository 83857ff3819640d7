#!/usr/bin/env python
"""Instruction-tune a dense causal LM with PESC (or LoRA / full fine-tuning) and compare the results.

Default run, with no download: the embedded tiny Llama and byte tokenizer are pre-trained briefly on
the generic part of the synthetic data ("the dense model", saved to OUT/dense), then crafted into a
PESC model and instruction-tuned on all task families with the prompt masked. With ``--baseline
lora`` the same dense model is also tuned with LoRA at about the same trainable parameter count, and
the final table compares trainable parameters, final answer loss, held-out exact match and tokens/s.

    python examples/finetune.py --method pesc --baseline lora --out outputs/demo
    torchrun --nproc_per_node=2 examples/finetune.py --steps 100 --out outputs/ddp     # DDP (gloo on CPU)
    torchrun --nproc_per_node=8 examples/finetune.py --model /path/to/hf-llama --fsdp --data train.jsonl

Outputs under --out: dense/ (the pre-trained dense model), <method>/{metrics.json, loss.png,
checkpoint/} for each tuned model, and results.md, summary.json, loss_curves.png comparing them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

try:
    import pesc_kernels  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # running from a clone (built in place): use its python/ directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from pesc_demo.train import distributed, methods, report  # noqa: E402
from pesc_demo.train.models import default_dtype, four_bit_unavailable_reason, quiet_libraries, resolve_device  # noqa: E402
from pesc_demo.train.pipeline import MethodSpec, RunSettings, evaluate_base, finetune, load_data, pretrain_dense  # noqa: E402
from pesc_demo.train.tokenizer import load_tokenizer  # noqa: E402

PRESETS = {"camelidae": "camelidae", "pesc-script": "pesc_script", "sparsetral": "sparsetral"}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", type=Path, help="local Hugging Face checkpoint dir (with tokenizer and chat "
                   "template) to tune instead of the embedded tiny Llama")
    g.add_argument("--dense", type=Path, help="reuse a dense model saved by an earlier run (OUT/dense) "
                   "instead of pre-training the embedded model again")
    g.add_argument("--data", type=Path, help="training JSONL ({instruction,input,output} or {messages}); "
                   "default: the synthetic tasks")
    g.add_argument("--eval-data", type=Path, help="held-out JSONL (default: hold out --eval-fraction of --data)")
    g.add_argument("--eval-fraction", type=float, default=0.1)
    g.add_argument("--train-per-task", type=int, default=1000, help="synthetic training examples per task")
    g.add_argument("--heldout-per-task", type=int, default=50, help="synthetic held-out examples per task")
    g.add_argument("--max-length", type=int, default=256, help="longest allowed encoded conversation")
    g = p.add_argument_group("dense pre-training (embedded model only)")
    g.add_argument("--dense-steps", type=positive_int, default=1200)
    g.add_argument("--dense-lr", type=float, default=1e-3)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--method", choices=methods.METHODS, default="pesc")
    g.add_argument("--baseline", choices=("none",) + methods.METHODS, default="none",
                   help="also tune the dense model with this method and compare")
    g.add_argument("--steps", type=positive_int, default=800)
    g.add_argument("--batch-size", type=positive_int, default=32, help="conversations per step per process")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, default=Path("outputs/finetune"))
    g = p.add_argument_group("PESC (defaults sized for the embedded model; --preset starts from a paper preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="start from this preset; explicit flags override it")
    g.add_argument("--num-experts", type=int)
    g.add_argument("--top-k", type=int)
    g.add_argument("--adapter-dim", type=int)
    g.add_argument("--activation", choices=("gelu", "gelu_tanh", "silu", "relu", "identity"))
    g.add_argument("--scaling", type=float)
    g.add_argument("--adapter-dropout", type=float)
    g.add_argument("--aux-loss-coef", type=float)
    g.add_argument("--z-loss-coef", type=float)
    g.add_argument("--no-normalize-top-k", action="store_true", help="keep raw softmax probabilities as weights")
    g.add_argument("--target-modules", help="comma-separated FFN module names to craft (default: the layer's)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", default="auto",
                   help="an integer, or 'auto': match the trainable parameter count of the PESC config")
    g.add_argument("--lora-alpha", type=float, help="default: equal to the rank (scaling 1)")
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-targets", default=",".join(methods.DEFAULT_LORA_TARGETS))
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else CPU), cpu, cuda, cuda:N")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 on GPU, float32 on CPU")
    g.add_argument("--load-in-4bit", action="store_true", help="NF4 base weights (bitsandbytes; GPU or CPU)")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP (under torchrun)")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--max-new-tokens", type=int, help="default: longest held-out answer + 8 tokens")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p.parse_args(argv)


def pesc_config_from_args(args):
    import pesc_kernels

    # Without --preset: the library defaults with rank-16 adapters, sized for the embedded model.
    preset = getattr(pesc_kernels.PESCConfig, PRESETS[args.preset])() if args.preset else None
    base = (preset or pesc_kernels.PESCConfig(adapter_dim=16)).to_dict()
    explicit = dict(num_experts=args.num_experts, top_k=args.top_k, adapter_dim=args.adapter_dim,
                    activation=args.activation, scaling=args.scaling, adapter_dropout=args.adapter_dropout,
                    aux_loss_coef=args.aux_loss_coef, z_loss_coef=args.z_loss_coef,
                    normalize_top_k=False if args.no_normalize_top_k else None,
                    target_modules=args.target_modules.split(",") if args.target_modules else None)
    return methods.pesc_config(**{**base, **{k: v for k, v in explicit.items() if v is not None}})


def method_spec(method, args, base_dir, pesc):
    lora_rank, targets = 8, tuple(args.lora_targets.split(","))
    if method == "lora":
        if args.lora_rank == "auto":
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                shape_only = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
            lora_rank = methods.matching_lora_rank(
                shape_only, methods.pesc_trainable_count(shape_only.config, pesc), targets)
        else:
            lora_rank = int(args.lora_rank)
    return MethodSpec(method, args.steps, args.lr, pesc=pesc if method == "pesc" else None, lora_rank=lora_rank,
                      lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=targets)


def usage_error(args, device) -> str | None:
    """Why this combination of flags cannot run, checked before any work starts (None: it can)."""
    if args.load_in_4bit and (reason := four_bit_unavailable_reason(device)):
        return reason
    if args.load_in_4bit and args.fsdp:
        return "--fsdp cannot shard 4-bit (bitsandbytes) weights; use DDP (drop --fsdp)"
    if args.load_in_4bit and "full" in (args.method, args.baseline):
        return "--load-in-4bit freezes the base in NF4, so full fine-tuning cannot train it; use --method pesc or lora"
    if args.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return "--fsdp needs several processes: launch with torchrun --nproc_per_node=N"
    if args.model and args.dense:
        return "give --model (a Hugging Face checkpoint) or --dense (an earlier dense model), not both"
    if args.data and not (args.model or args.dense):
        return ("--data: the embedded model is pre-trained on the synthetic tasks, so with your own data give "
                "--model (a Hugging Face checkpoint) or --dense (the dense model of an earlier run)")
    if args.eval_data and not args.data:
        return "--eval-data holds out part of your --data; give --data as well"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if problem := usage_error(args, device):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    dist_info = distributed.init_distributed(device)
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    settings = RunSettings(device=device, dtype=dtype, dist=dist_info, batch_size=args.batch_size, seed=args.seed,
                           max_length=args.max_length, eval_batch_size=args.eval_batch_size,
                           max_new_tokens=args.max_new_tokens, show_progress=not args.no_progress,
                           fsdp=args.fsdp, load_in_4bit=args.load_in_4bit)
    say = print if dist_info.is_main else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    data = load_data(train_path=args.data, eval_path=args.eval_data, eval_fraction=args.eval_fraction,
                     train_per_task=args.train_per_task, heldout_per_task=args.heldout_per_task, seed=args.seed)
    say(f"data: {data.source}: {len(data.train)} training, {len(data.heldout)} held-out conversations")
    say(f"device: {device} ({dtype}), processes: {dist_info.world_size}"
        + (" (FSDP)" if args.fsdp else " (DDP)" if dist_info.enabled else ""))

    if args.model or args.dense:
        base_dir = args.model or args.dense
    else:
        base_dir = pretrain_dense(data, settings, args.out / "dense", steps=args.dense_steps, lr=args.dense_lr)
        say(f"dense model: {base_dir}")
    tokenizer = load_tokenizer(base_dir)

    # Also for a LoRA-only run: --lora-rank auto matches the trainable count of this PESC config.
    pesc = pesc_config_from_args(args)
    rows = [{"name": "dense (before tuning)", "heldout": evaluate_base(base_dir, tokenizer, data, settings)}]
    curves = {}
    for method in [args.method] + ([args.baseline] if args.baseline not in ("none", args.method) else []):
        spec = method_spec(method, args, base_dir, pesc)
        row = finetune(spec, base_dir, tokenizer, data, settings, args.out / method)
        if method == "lora":
            row["name"] = f"lora (rank {spec.lora_rank})"
        elif method == "pesc":
            row["name"] = f"pesc (E={pesc.num_experts}, k={pesc.top_k}, r={pesc.adapter_dim})"
        curves[row["name"]] = row.pop("history")
        rows.append(row)
        say(f"{method}: held-out exact match {100 * row['heldout']['exact_match']:.1f}%, "
            f"outputs in {args.out / method}")

    if dist_info.is_main:
        table = report.comparison_table(rows)
        per_task = report.per_task_table(rows)
        report.plot_losses(curves, args.out / "loss_curves.png", title="fine-tuning: answer loss per step")
        report.write_json(args.out / "summary.json", {"rows": rows, "data": data.source,
                                                      "world_size": dist_info.world_size})
        (args.out / "results.md").write_text(f"{table}\n\nHeld-out exact match per task:\n\n{per_task}\n")
        print(f"\n{table}\n\nheld-out exact match per task:\n\n{per_task}\n")
        print(f"outputs: {args.out.resolve()} (results.md, summary.json, loss_curves.png, "
              f"<method>/metrics.json, <method>/loss.png, <method>/checkpoint)")
    distributed.shutdown(dist_info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
