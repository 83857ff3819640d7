"""Conversations -> token ids with the prompt masked, and padded batches.

Each conversation is rendered with the tokenizer's chat template. The text is cut at turn
boundaries: for the i-th message, if it is an assistant turn, the text the template adds for it
(``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt=True)``, i.e. the
answer and its end-of-turn marker) is trained; everything else (system and user turns, role headers,
the generation prompt) gets label -100, so only answer tokens count in the loss. The text up to each
segment boundary is tokenized whole and each segment's tokens are what it adds to the previous
boundary's tokens, so a label boundary never falls inside a token, the prompt is tokenized exactly
as generation tokenizes it, and a segment is tokenized as a continuation (SentencePiece tokenizers
do not get a spurious word-start marker at the start of each answer). Where a tokenizer merges
across a boundary (the shorter text's tokens are not a prefix of the longer's), that segment is
tokenized on its own instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the loss does not count


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, conversation) -> str:
    """The text generation starts from: every message before the answer plus the generation prompt."""
    return _render(tokenizer, conversation.prompt_messages, add_generation_prompt=True)


def prompt_ids(tokenizer, conversation) -> list[int]:
    return tokenizer.encode(prompt_text(tokenizer, conversation), add_special_tokens=False)


def _segments(tokenizer, messages):
    """[(text, trained)] covering the full rendering of ``messages``."""
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise ValueError("the chat template does not render conversations prefix-consistently "
                             "(rendering the first turns is not a prefix of rendering more turns), so the "
                             "prompt cannot be masked by turn; use a template without that property")
        segments += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    full = _render(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(done):
        raise ValueError("the chat template's rendering of the whole conversation does not extend its turns")
    segments.append((full[len(done):], False))
    return [(text, trained) for text, trained in segments if text]


def encode_conversation(tokenizer, conversation, max_length: int | None = None) -> Encoded:
    """Token ids and labels (answer tokens only) for one conversation.

    Raises ValueError when the encoding is longer than ``max_length``: truncating would silently
    drop (part of) an answer.
    """
    ids, labels, text_so_far = [], [], ""
    for text, trained in _segments(tokenizer, list(conversation.messages)):
        text_so_far += text
        whole = tokenizer.encode(text_so_far, add_special_tokens=False)
        piece = whole[len(ids):] if whole[:len(ids)] == ids else tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"a conversation encodes to {len(ids)} tokens, more than max_length={max_length}")
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError("a conversation has no answer tokens to train on (empty assistant turns)")
    return Encoded(ids, labels)


def encode_all(tokenizer, conversations, max_length: int | None = None) -> list[Encoded]:
    """Encode every conversation; errors name the conversation's index."""
    out = []
    for index, conversation in enumerate(conversations):
        try:
            out.append(encode_conversation(tokenizer, conversation, max_length))
        except ValueError as error:
            raise ValueError(f"conversation {index}: {error}") from None
    return out


def collate(items: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask (1 on real tokens) and labels (-100 on padding)."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_padded_prompts(prompts: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch for generation (so every row's next token is at the last position)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
