"""Deterministic synthetic multi-task instruction data built from the families in :mod:`.tasks`.

Splits: ``heldout`` (evaluation), ``train`` (instruction tuning, all families) and ``pretrain`` (the
dense model's brief pre-training, generic families only). The held-out split is drawn first from its
own random stream, and the other splits never contain a held-out (task, input) pair, so held-out
exact match measures generalisation to unseen inputs. The held-out split depends only on (seed, its
size), so it does not change when the training set grows; the training and pre-training splits depend
on (seed, their size, the held-out size), since they skip the held-out pairs.
Randomness comes from ``random.Random`` seeded with strings, which is stable across processes and
Python runs (no dependence on PYTHONHASHSEED).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .conversation import Conversation, user_content
from .tasks import GENERIC_TASKS, TASKS, family

MAX_DRAWS_PER_EXAMPLE = 200  # give up (with an error) if a family's input space is exhausted


@dataclass(frozen=True)
class Example:
    """One synthetic task: an instruction, an input and the exactly checkable answer."""

    task: str
    instruction: str
    input: str
    output: str

    def to_conversation(self) -> Conversation:
        return Conversation(
            messages=({"role": "user", "content": user_content(self.instruction, self.input)},
                      {"role": "assistant", "content": self.output}),
            task=self.task,
        )

    def to_record(self) -> dict:
        """The instruction-format JSONL record (with its task name)."""
        return {"instruction": self.instruction, "input": self.input, "output": self.output, "task": self.task}


def _draw(task: str, n: int, stream: str, exclude: set[tuple[str, str]]) -> list[Example]:
    """n distinct examples of one family from the named random stream, avoiding ``exclude``."""
    fam = family(task)
    rng = random.Random(stream)
    seen: set[str] = set()
    out = []
    draws = 0
    while len(out) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_EXAMPLE * max(n, 1):
            raise ValueError(f"task {task!r}: could not draw {n} distinct examples for {stream!r}")
        input_text, answer = fam.make(rng)
        instruction = rng.choice(fam.instructions)
        if input_text in seen or (task, input_text) in exclude:
            continue
        seen.add(input_text)
        out.append(Example(task, instruction, input_text, answer))
    return out


def _tasks(tasks) -> list[str]:
    names = list(TASKS) if tasks is None else list(tasks)
    for name in names:
        family(name)  # unknown names raise with the list of known ones
    return names


def heldout_split(n_per_task: int, seed: int = 0, tasks=None) -> list[Example]:
    """The evaluation split, grouped by task in family order."""
    return [ex for task in _tasks(tasks) for ex in _draw(task, n_per_task, f"{seed}:heldout:{task}", set())]


def _disjoint_split(split: str, n_per_task: int, seed: int, tasks, heldout_n: int) -> list[Example]:
    names = _tasks(tasks)
    held = {(ex.task, ex.input) for ex in heldout_split(heldout_n, seed, names)}
    examples = [ex for task in names for ex in _draw(task, n_per_task, f"{seed}:{split}:{task}", held)]
    random.Random(f"{seed}:{split}:order").shuffle(examples)  # interleave the families
    return examples


def train_split(n_per_task: int, seed: int = 0, tasks=None, heldout_per_task: int = 50) -> list[Example]:
    """The instruction-tuning split (all families, shuffled), disjoint from ``heldout_split``."""
    return _disjoint_split("train", n_per_task, seed, tasks, heldout_per_task)


def pretrain_split(n_per_task: int, seed: int = 0, heldout_per_task: int = 50) -> list[Example]:
    """The dense model's pre-training data: the generic families only, disjoint from the held-out split."""
    return _disjoint_split("pretrain", n_per_task, seed, GENERIC_TASKS, heldout_per_task)


def check_example(example: Example) -> bool:
    """Re-solve the task from its input text alone and compare with the stored answer."""
    return family(example.task).solve(example.input) == example.output


def verify(examples) -> None:
    """Raise ValueError listing every example whose answer the checker does not reproduce."""
    wrong = [ex for ex in examples if not check_example(ex)]
    if wrong:
        shown = "; ".join(f"{ex.task}: {ex.input!r} -> {ex.output!r}" for ex in wrong[:5])
        raise ValueError(f"{len(wrong)} of {len(examples)} examples have wrong answers: {shown}")
