"""Instruction data for the examples: a deterministic synthetic multi-task set and JSONL loading.

- :mod:`.tasks`: the task families (each with a distinct skill and an independent solver).
- :mod:`.synthetic`: train / held-out / pre-training splits and the answer checker.
- :mod:`.jsonl`: user data as ``{"instruction","input","output"}`` or ``{"messages": [...]}`` lines.
- :class:`Conversation`: the record type training and evaluation consume.

``python -m pesc_demo.data export DIR`` writes the default splits as JSONL.
"""
from .conversation import Conversation, user_content, validate_messages
from .jsonl import JSONLError, load_jsonl, parse_record, write_jsonl
from .synthetic import Example, check_example, heldout_split, pretrain_split, train_split, verify
from .tasks import GENERIC_TASKS, TASKS, TaskFamily

__all__ = [
    "Conversation", "user_content", "validate_messages",
    "JSONLError", "load_jsonl", "parse_record", "write_jsonl",
    "Example", "check_example", "heldout_split", "pretrain_split", "train_split", "verify",
    "GENERIC_TASKS", "TASKS", "TaskFamily",
]
