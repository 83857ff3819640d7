"""The one record type the training code consumes: a chat conversation ending in an assistant turn.

Both data sources become :class:`Conversation`: synthetic :class:`~pesc_demo.data.Example`
objects and user JSONL lines (instruction format or chat format). Training learns every assistant
turn; exact-match evaluation generates the final assistant turn from the messages before it.
"""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


def user_content(instruction: str, input_text: str) -> str:
    """The user turn of an instruction-format record: the instruction, then the input on its own line."""
    return f"{instruction}\n{input_text}" if input_text else instruction


def validate_messages(messages) -> tuple[dict, ...]:
    """Check a chat message list; return it as a tuple of plain {"role", "content"} dicts.

    Raises ValueError naming the offending message. Rules: a non-empty list of objects with exactly
    the keys "role" (system/user/assistant) and "content" (a string); at least one user turn; the last
    message is an assistant turn (the answer that training and evaluation use).
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list')
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object, got {type(message).__name__}")
        if set(message) != {"role", "content"}:
            raise ValueError(f'messages[{i}] must have exactly the keys "role" and "content", got {sorted(message)}')
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}].content must be a string, got {type(message['content']).__name__}")
        checked.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" for m in checked):
        raise ValueError("messages must contain at least one user turn")
    if checked[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be an assistant turn (the answer), got {checked[-1]['role']!r}")
    return tuple(checked)


@dataclass(frozen=True)
class Conversation:
    """A validated chat; ``task`` names its task family when known (for per-task metrics)."""

    messages: tuple[dict, ...]
    task: str | None = None

    @property
    def prompt_messages(self) -> list[dict]:
        """The messages before the final answer: what generation starts from."""
        return list(self.messages[:-1])

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]
