"""A byte-level tokenizer that needs no download, and the loader that picks it or a Hugging Face one.

Ids 0-255 are the UTF-8 bytes; six special tokens follow (pad, bos, eos and the three chat roles),
so the vocabulary has 262 entries and any text round-trips exactly. The chat format is::

    <|bos|><|user|>\\n{content}<|eos|><|assistant|>\\n{content}<|eos|>...

with ``<|assistant|>\\n`` appended as the generation prompt, so a model learns to end its answer with
``<|eos|>``. The class implements the subset of the Hugging Face tokenizer interface the examples
use (``encode``, ``decode``, ``apply_chat_template(tokenize=False)``, the special token ids,
``save_pretrained``), so the training code treats it and ``AutoTokenizer`` tokenizers alike.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

TOKENIZER_CLASS = "PescByteTokenizer"
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")
NUM_BYTES = 256


class ByteTokenizer:
    """UTF-8 bytes plus special tokens; see the module docstring for the chat format."""

    pad_token, bos_token, eos_token = SPECIAL_TOKENS[:3]
    chat_template = "builtin byte-level chat format (see pesc_demo.train.tokenizer)"

    def __init__(self, padding_side: str = "right"):
        self.padding_side = padding_side
        self._special_ids = {tok: NUM_BYTES + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._special_tokens = {i: tok for tok, i in self._special_ids.items()}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

    def __len__(self) -> int:
        return NUM_BYTES + len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self)

    @property
    def pad_token_id(self) -> int:
        return self._special_ids[self.pad_token]

    @property
    def bos_token_id(self) -> int:
        return self._special_ids[self.bos_token]

    @property
    def eos_token_id(self) -> int:
        return self._special_ids[self.eos_token]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Special-token strings in ``text`` become their ids; everything else becomes UTF-8 bytes."""
        ids = [self.bos_token_id] if add_special_tokens else []
        for piece in self._split.split(text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out, pending = [], bytearray()
        for i in (int(x) for x in ids):
            if i < NUM_BYTES:
                pending.append(i)
                continue
            if i not in self._special_tokens:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary of {len(self)}")
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if not skip_special_tokens:
                out.append(self._special_tokens[i])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False, **_):
        text = self.bos_token + "".join(
            f"<|{m['role']}|>\n{m['content']}{self.eos_token}" for m in messages)
        if add_generation_prompt:
            text += "<|assistant|>\n"
        return self.encode(text) if tokenize else text

    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": TOKENIZER_CLASS, "special_tokens": list(SPECIAL_TOKENS),
                  "padding_side": self.padding_side}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory) -> "ByteTokenizer":
        config = json.loads((Path(directory) / "tokenizer_config.json").read_text())
        special = tuple(config.get("special_tokens", ()))
        if config.get("tokenizer_class") != TOKENIZER_CLASS or special != SPECIAL_TOKENS:
            raise ValueError(f"{directory} does not hold a {TOKENIZER_CLASS} with this version's special tokens")
        return cls(padding_side=config.get("padding_side", "right"))


def is_byte_tokenizer_dir(directory) -> bool:
    path = Path(directory) / "tokenizer_config.json"
    return path.exists() and json.loads(path.read_text()).get("tokenizer_class") == TOKENIZER_CLASS


def load_tokenizer(directory):
    """The byte tokenizer saved in ``directory``, or its Hugging Face tokenizer via AutoTokenizer.

    A Hugging Face tokenizer must have a chat template (the examples format every conversation
    with it). When it has no pad token, the eos token pads (padding is masked out everywhere).
    """
    if is_byte_tokenizer_dir(directory):
        return ByteTokenizer.from_pretrained(directory)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer in {directory} has no chat template; the examples format every "
                         "conversation with tokenizer.apply_chat_template, so set one (tokenizer_config.json "
                         '"chat_template" or chat_template.jinja) first')
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {directory} has no eos token; generation needs one to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
