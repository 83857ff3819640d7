"""``python -m pesc_demo.data export DIR``: write the synthetic splits as instruction-format JSONL."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .jsonl import write_jsonl
from .synthetic import heldout_split, train_split, verify


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pesc_demo.data")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write train.jsonl and heldout.jsonl")
    export.add_argument("out", type=Path)
    export.add_argument("--train-per-task", type=int, default=1000)
    export.add_argument("--heldout-per-task", type=int, default=50)
    export.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    splits = {
        "train": train_split(args.train_per_task, args.seed, heldout_per_task=args.heldout_per_task),
        "heldout": heldout_split(args.heldout_per_task, args.seed),
    }
    for name, examples in splits.items():
        verify(examples)
        write_jsonl(args.out / f"{name}.jsonl", (ex.to_record() for ex in examples))
        print(f"{args.out / f'{name}.jsonl'}: {len(examples)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
