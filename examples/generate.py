#!/usr/bin/env python
"""Generate answers with a base model plus a checkpoint written by examples/finetune.py.

    python examples/generate.py --checkpoint outputs/demo/pesc/checkpoint \\
        --prompt 'Add the numbers.\\n12 + 30' --prompt 'Sort the numbers.\\n9 2 7'
    python examples/generate.py --checkpoint outputs/demo/pesc/checkpoint --prompts-file heldout.jsonl

The checkpoint's method (PESC adapters via ``pesc_kernels.load_pesc``, a peft LoRA adapter, or a
fully fine-tuned model) and its base model come from its finetune_info.json; ``--base`` overrides
the base. Without ``--checkpoint`` the base model alone generates. Each prompt is one user turn
(``\\n`` in a prompt means a newline), formatted with the model's chat template and decoded greedily.
A ``.jsonl`` prompts file holds records in the training format; their reference answers are then
compared with the generations and the exact-match rate is printed. Any other file has one prompt per
line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import pesc_kernels  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # running from a clone (built in place): use its python/ directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from pesc_demo.data import Conversation, load_jsonl  # noqa: E402
from pesc_demo.train import methods  # noqa: E402
from pesc_demo.train.encoding import prompt_ids  # noqa: E402
from pesc_demo.train.evaluate import generate, is_exact_match  # noqa: E402
from pesc_demo.train.models import default_dtype, load_base, quiet_libraries, resolve_device  # noqa: E402
from pesc_demo.train.tokenizer import load_tokenizer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a <method>/checkpoint directory written by finetune.py")
    p.add_argument("--base", type=Path, help="base model directory (default: the one the checkpoint names)")
    p.add_argument("--prompt", action="append", default=[], help="a user prompt; repeat for several")
    p.add_argument("--prompts-file", type=Path, help="one prompt per line, or a .jsonl file of training records")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    return p.parse_args(argv)


def read_prompts(args) -> list[Conversation]:
    """Conversations whose last message is the (possibly empty) reference answer."""
    def ask(text):
        return Conversation(({"role": "user", "content": text.replace("\\n", "\n")},
                             {"role": "assistant", "content": ""}))

    conversations = [ask(text) for text in args.prompt]
    if args.prompts_file:
        if args.prompts_file.suffix == ".jsonl":
            conversations += load_jsonl(args.prompts_file)
        else:
            conversations += [ask(line.rstrip("\n")) for line in
                              args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not conversations:
        raise SystemExit("error: give at least one --prompt or a --prompts-file")
    return conversations


def load_model(args, device):
    """(model, tokenizer, description) for the checkpoint (or the base alone)."""
    info = methods.checkpoint_info(args.checkpoint) if args.checkpoint else None
    base_dir = args.base or (Path(info["base_model"]) if info else None)
    if base_dir is None:
        raise SystemExit("error: give --checkpoint, or --base to generate with a base model alone")
    dtype = default_dtype(device)
    if info and info["method"] == "full":  # a whole fine-tuned model, tokenizer saved with it
        if args.base:
            raise SystemExit("error: --base does not apply to a full fine-tuning checkpoint: it holds the whole model")
        return load_base(args.checkpoint, device, dtype), load_tokenizer(args.checkpoint), f"full: {args.checkpoint}"
    tokenizer = load_tokenizer(base_dir)
    model = load_base(base_dir, device, dtype)
    if info is None:
        return model, tokenizer, f"base: {base_dir}"
    model = methods.load_checkpoint(model, args.checkpoint, info["method"]).to(device)
    return model, tokenizer, f"{info['method']}: {args.checkpoint} on {base_dir}"


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    device = resolve_device(args.device)
    conversations = read_prompts(args)
    model, tokenizer, description = load_model(args, device)
    texts = generate(model, tokenizer, [prompt_ids(tokenizer, c) for c in conversations],
                     max_new_tokens=args.max_new_tokens, device=device, batch_size=args.batch_size)
    if not args.json:
        print(f"model: {description}\n")
    checked = []
    for conversation, text in zip(conversations, texts):
        reference = conversation.answer or None
        record = {"prompt": conversation.prompt_messages[-1]["content"], "generated": text}
        if reference is not None:
            record |= {"expected": reference, "correct": is_exact_match(text, reference)}
            checked.append(record["correct"])
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            mark = "" if reference is None else ("  [correct]" if record["correct"] else f"  [expected {reference!r}]")
            print(f"> {record['prompt']}\n{text}{mark}\n")
    if checked and not args.json:
        print(f"exact match: {sum(checked)}/{len(checked)} = {100 * sum(checked) / len(checked):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
