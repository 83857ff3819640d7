"""The synthetic task families: each makes (input, answer) pairs and can re-solve a task from its input.

Every family exercises a distinct skill (arithmetic, ordering, counting, retrieval, rule-based
copying, ...), so the experts of a crafted model have something to specialise in. ``make`` draws the
task's values, renders the input text and computes the answer from those values; ``solve`` parses the
rendered input text alone and computes the answer again, so the checker in
:mod:`pesc_demo.data.synthetic` re-solves each task from its text rather than replaying the
generator. For the rule families whose answer is a function of the text itself (copy, upper,
vowels) the two sides necessarily apply the same rule; the check there guards the rendering and
parsing.

Inputs and answers are short ASCII strings, so a byte-level model of a few million parameters can
learn them in a few hundred steps.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class TaskFamily:
    """One task family. ``generic`` families form the dense model's pre-training data."""

    name: str
    skill: str
    instructions: tuple[str, ...]
    make: Callable[[random.Random], tuple[str, str]]
    solve: Callable[[str], str]
    generic: bool = False


def _parse(pattern: str, text: str, task: str) -> re.Match:
    match = re.fullmatch(pattern, text)
    if match is None:
        raise ValueError(f"task {task!r}: input {text!r} does not have the expected form {pattern!r}")
    return match


def _word(rng: random.Random, low: int = 2, high: int = 6) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return [_word(rng) for _ in range(rng.randint(low, high))]


def _numbers(rng: random.Random, low: int, high: int) -> list[int]:
    return [rng.randint(0, 99) for _ in range(rng.randint(low, high))]


def _ints(text: str, task: str) -> list[int]:
    _parse(r"\d+( \d+)*", text, task)
    return [int(tok) for tok in text.split(" ")]


# --- add: two-number addition ---------------------------------------------------------------------
def _make_add(rng):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a} + {b}", str(a + b)


def _solve_add(text):
    match = _parse(r"(\d+) \+ (\d+)", text, "add")
    return str(int(match.group(1)) + int(match.group(2)))


# --- reverse: reverse a list of letters ---------------------------------------------------------
def _make_reverse(rng):
    items = [rng.choice(LETTERS) for _ in range(rng.randint(3, 6))]
    return " ".join(items), " ".join(reversed(items))


def _solve_reverse(text):
    _parse(r"[a-z]( [a-z])*", text, "reverse")
    return " ".join(text.split(" ")[::-1])


# --- sort: sort numbers ascending ---------------------------------------------------------------
def _make_sort(rng):
    values = _numbers(rng, 3, 5)
    return " ".join(map(str, values)), " ".join(map(str, sorted(values)))


def _solve_sort(text):
    return " ".join(map(str, sorted(_ints(text, "sort"))))


# --- count: occurrences of a letter in a string --------------------------------------------------
def _make_count(rng):
    alphabet = "abcde"
    letter = rng.choice(alphabet)
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 10)))
    return f"letter {letter} in {text}", str(text.count(letter))


def _solve_count(text):
    match = _parse(r"letter ([a-z]) in ([a-z]+)", text, "count")
    return str(match.group(2).count(match.group(1)))


# --- max: the largest number -------------------------------------------------------------------
def _make_max(rng):
    values = _numbers(rng, 3, 5)
    return " ".join(map(str, values)), str(max(values))


def _solve_max(text):
    return str(max(_ints(text, "max")))


# --- lookup: the value of a key in a small table -----------------------------------------------
def _make_lookup(rng):
    keys = rng.sample(LETTERS, rng.randint(3, 4))
    values = [rng.randint(0, 9) for _ in keys]
    query = rng.randrange(len(keys))
    table = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"{table}; key {keys[query]}", str(values[query])


def _solve_lookup(text):
    match = _parse(r"([a-z]=\d( [a-z]=\d)*); key ([a-z])", text, "lookup")
    table = dict(item.split("=") for item in match.group(1).split(" "))
    key = match.group(3)
    if key not in table:
        raise ValueError(f"task 'lookup': key {key!r} is not in the table of {text!r}")
    return table[key]


# --- initials: the first letter of each word -----------------------------------------------------
def _make_initials(rng):
    words = _words(rng, 2, 5)
    return " ".join(words), "".join(w[0] for w in words)


def _solve_initials(text):
    _parse(r"[a-z]+( [a-z]+)*", text, "initials")
    return "".join(w[0] for w in text.split(" "))


# --- generic families: copying, with and without a rule --------------------------------------------
def _make_copy(rng):
    text = " ".join(_words(rng, 1, 3))
    return text, text


def _solve_copy(text):
    return text


def _make_upper(rng):
    text = " ".join(_words(rng, 1, 3))
    return text, text.upper()


def _solve_upper(text):
    return text.upper()


def _make_vowels(rng):
    text = " ".join(_words(rng, 1, 3))
    return text, _mask_vowels(text)


def _mask_vowels(text):
    return "".join("*" if ch in VOWELS else ch for ch in text)


TASKS: dict[str, TaskFamily] = {
    family.name: family
    for family in [
        TaskFamily("add", "two-number addition",
                   ("Add the numbers.", "What is the sum?"), _make_add, _solve_add),
        TaskFamily("reverse", "reverse the order of a list",
                   ("Reverse the list.", "Write it backwards."), _make_reverse, _solve_reverse),
        TaskFamily("sort", "sort numbers ascending",
                   ("Sort the numbers.", "Order from small to large."),
                   _make_sort, _solve_sort),
        TaskFamily("count", "count occurrences of a letter",
                   ("Count the letter.", "How often does it occur?"),
                   _make_count, _solve_count),
        TaskFamily("max", "find the largest number",
                   ("Give the largest number.", "What is the maximum?"), _make_max, _solve_max),
        TaskFamily("lookup", "look up a key in a table",
                   ("Look up the key.", "Find the value."), _make_lookup, _solve_lookup),
        TaskFamily("initials", "first letter of each word",
                   ("Give the initials.", "First letter of each word."),
                   _make_initials, _solve_initials),
        TaskFamily("copy", "copy the text exactly",
                   ("Copy the text.", "Repeat it exactly."), _make_copy, _solve_copy, generic=True),
        TaskFamily("upper", "convert to upper case",
                   ("Convert to upper case.", "Write it in capitals."),
                   _make_upper, _solve_upper, generic=True),
        TaskFamily("vowels", "copy with a rule: vowels become *",
                   ("Replace vowels with *.", "Mask the vowels."),
                   _make_vowels, _mask_vowels, generic=True),
    ]
}

GENERIC_TASKS: tuple[str, ...] = tuple(name for name, family in TASKS.items() if family.generic)


def family(name: str) -> TaskFamily:
    if name not in TASKS:
        raise KeyError(f"unknown task family {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
