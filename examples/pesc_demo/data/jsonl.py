"""User data from JSONL: one record per line, instruction format or chat format.

Accepted records (one JSON object per line; whitespace-only lines are allowed and are not records):

- instruction format: ``{"instruction": str, "input": str (optional), "output": str}``
- chat format: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` ending
  in an assistant turn

Either may carry ``"task": str`` (a label for per-task metrics). Any other key, a missing or
mistyped field, or invalid JSON raises :class:`JSONLError` naming the file and line number. Nothing
is silently dropped: every non-blank line becomes exactly one :class:`Conversation`.
"""
from __future__ import annotations

import json
from pathlib import Path

from .conversation import Conversation, user_content, validate_messages

INSTRUCTION_KEYS = {"instruction", "input", "output"}
OPTIONAL_KEYS = {"task"}


class JSONLError(ValueError):
    """A malformed JSONL line; the message starts with "<path>:<line>:"."""

    def __init__(self, path, line_number: int, problem: str):
        super().__init__(f"{path}:{line_number}: {problem}")
        self.path = str(path)
        self.line_number = line_number


def _string_field(record: dict, key: str, required: bool) -> str:
    if key not in record:
        if required:
            raise ValueError(f'missing required field "{key}"')
        return ""
    if not isinstance(record[key], str):
        raise ValueError(f'field "{key}" must be a string, got {type(record[key]).__name__}')
    return record[key]


def parse_record(record) -> Conversation:
    """One decoded JSON value -> Conversation; raises ValueError describing the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    task = _string_field(record, "task", required=False) or None
    if "messages" in record:
        extra = set(record) - {"messages"} - OPTIONAL_KEYS
        if extra:
            raise ValueError(f"chat record has unexpected keys {sorted(extra)} "
                             f'(allowed: "messages", "task"; instruction keys cannot be mixed in)')
        return Conversation(validate_messages(record["messages"]), task)
    extra = set(record) - INSTRUCTION_KEYS - OPTIONAL_KEYS
    if extra:
        raise ValueError(f'unexpected keys {sorted(extra)}; expected "instruction", "input", "output" '
                         f'(optional "task") or "messages"')
    instruction = _string_field(record, "instruction", required=True)
    input_text = _string_field(record, "input", required=False)
    output = _string_field(record, "output", required=True)
    messages = ({"role": "user", "content": user_content(instruction, input_text)},
                {"role": "assistant", "content": output})
    return Conversation(messages, task)


def load_jsonl(path) -> list[Conversation]:
    """Every record of a JSONL file, in order; raises JSONLError at the first malformed line."""
    path = Path(path)
    conversations = []
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise JSONLError(path, line_number, f"invalid JSON ({error.msg} at column {error.colno})") from None
            try:
                conversations.append(parse_record(record))
            except ValueError as error:
                raise JSONLError(path, line_number, str(error)) from None
    if not conversations:
        raise JSONLError(path, 0, "the file has no records")
    return conversations


def write_jsonl(path, records) -> None:
    """Write dict records (e.g. ``Example.to_record()``) one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
