"""convert(): rewrite a PESC checkpoint directory in another layout, one tensor at a time.

    python -m pesc_kernels convert SRC DST --to pesc|camelidae|sparsetral|qwen2idae

SRC is a pesc_kernels checkpoint (``save_pretrained`` of a crafted model) or an official one
(:mod:`pesc_kernels.checkpoints.official`); ``--to pesc`` writes ours, the others the official layout of that
flavor (the same files :func:`pesc_kernels.save_official` writes). Tensors keep their dtype and
bits: official -> pesc -> official gives the original tensors back.

Memory: the model is never built. Each output tensor is read from its source shard, converted
and written at once (:mod:`pesc_kernels.checkpoints.weight_files`); the only tensors held longer are one
layer's expert adapters when a layer's experts span two source shards (official -> pesc stacks
them into ``w_down [E, d, r]``, ``w_up [E, r, d]``). Peak memory is therefore about the largest
tensor plus a layer's adapters, for .bin sources the current shard (it is memory-mapped). Output
shard i holds what source shard i holds, under the new names (a stacked layer goes to the shard
where its last expert is). The result is written to a temporary directory beside DST and renamed
to DST only when complete; tokenizer and generation files are copied, remote-code ``*.py`` files
are not.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import official
from .layout import CheckpointLayout, describe_checkpoint
from .official_keys import official_expert_key, official_router_key
from .weight_files import (
    SafetensorsWriter,
    ShardReader,
    atomic_directory,
    check_new_directory,
    shard_file_names,
    write_index,
)

TARGETS = ("pesc", *official.FLAVORS)


@dataclass
class _Canonical:
    """A tensor in our layout, built from one or more source tensors."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    sources: list[str]
    build: Callable[[Callable[[str], torch.Tensor]], torch.Tensor]
    readers: int = 0  # output tensors made from it


@dataclass
class _Output:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    canonical: _Canonical
    pick: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, progress: bool = True) -> Path:
    """Write the checkpoint at ``src`` to the new directory ``dst`` in layout ``to``; return ``dst``."""
    if to not in TARGETS:
        raise ValueError(f"convert: --to must be one of {', '.join(TARGETS)}; got {to!r}")
    check_new_directory(dst)  # before any work
    layout = describe_checkpoint(src)
    flavor = None if to == "pesc" else official.flavor_named(to)
    canonical = _canonical_tensors(layout)
    outputs = _target_tensors(canonical, layout, flavor)
    first_down = next(iter(layout.adapters.values())).down[0]
    adapter_dtype = str(layout.tensors[first_down][1].dtype).removeprefix("torch.")
    stock = layout.stock_config.to_dict()
    if flavor is None:
        config = {**stock, "pesc": layout.pesc.to_dict()}
    else:
        config = official.official_config(stock, layout.pesc, flavor, adapter_dtype, where=f"convert --to {to}")
    shard_of = {name: shard for name, (shard, _) in layout.tensors.items()}
    groups: dict[int, list[_Output]] = {}
    for out in outputs:
        groups.setdefault(max(shard_of[s] for s in out.canonical.sources), []).append(out)
    total = sum(_nbytes(out) for out in outputs)

    with atomic_directory(dst) as staging, _Progress(total, progress) as bar:
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_side_files(layout, staging)
        names = shard_file_names(len(groups))
        later = _needed_later(groups, shard_of)
        buffered: dict[str, torch.Tensor] = {}
        weight_map = {}
        for file_name, (shard, group) in zip(names, sorted(groups.items())):
            bar.describe(f"{layout.files.shards[shard].name} -> {file_name}")
            with ShardReader(layout.files.shards[shard]) as reader:
                for name in later.get(shard, ()):
                    buffered[name] = reader.get(name).clone()  # a layer split across shards: keep until complete

                def fetch(name, reader=reader):
                    return buffered.pop(name) if name in buffered else reader.get(name)

                _write_shard(staging / file_name, group, fetch, bar)
            weight_map.update({out.name: file_name for out in group})
        if len(groups) > 1:
            write_index(staging, weight_map, total)
    return Path(dst)


def _nbytes(out: _Output) -> int:
    return math.prod(out.shape) * out.dtype.itemsize


def _write_shard(path: Path, group: list[_Output], fetch, bar) -> None:
    cache: dict[str, list] = {}  # canonical name -> [tensor, outputs still to write]
    with SafetensorsWriter(path, [(o.name, o.dtype, o.shape) for o in group]) as writer:
        for out in group:
            source = out.canonical
            if source.name not in cache:
                cache[source.name] = [source.build(fetch), source.readers]
            entry = cache[source.name]
            writer.write(out.name, out.pick(entry[0]))
            entry[1] -= 1
            if entry[1] == 0:
                del cache[source.name]
            bar.update(_nbytes(out))


def _needed_later(groups: dict[int, list[_Output]], shard_of: dict[str, int]) -> dict[int, list[str]]:
    """Source tensors to keep when their shard is read because the output using them is written later."""
    later: dict[int, list[str]] = {}
    for shard, group in groups.items():
        for out in group:
            for name in out.canonical.sources:
                if shard_of[name] != shard and name not in later.get(shard_of[name], []):
                    later.setdefault(shard_of[name], []).append(name)
    return later


def _canonical_tensors(layout: CheckpointLayout) -> list[_Canonical]:
    """Every tensor of the checkpoint in our layout, in source order (a stacked layer at its last expert)."""
    def read(name):
        return lambda fetch: fetch(name)

    order = {name: i for i, name in enumerate(layout.tensors)}
    entries: list[tuple[int, _Canonical]] = []
    if layout.flavor is None:
        for name, (_, info) in layout.tensors.items():
            entries.append((order[name], _Canonical(name, info.dtype, info.shape, [name], read(name))))
        return [entry for _, entry in entries]
    adapter_names = set()
    for module, found in layout.adapters.items():
        E, r, d = found.num_experts, found.adapter_dim, found.hidden_size
        dtype = layout.tensors[found.down[0]][1].dtype
        adapter_names.update(found.down + found.up + [found.router])
        router_dtype = layout.tensors[found.router][1].dtype
        entries.append((order[found.router], _Canonical(f"{module}.router.weight", router_dtype, (E, d),
                                                        [found.router], read(found.router))))
        for suffix, names, shape in (("w_down", found.down, (E, d, r)), ("w_up", found.up, (E, r, d))):
            def stack(fetch, names=names):  # nn.Linear weights are [out, in]; ours are input-major
                return torch.stack([fetch(n).t() for n in names])
            last = max(order[n] for n in names)
            entries.append((last, _Canonical(f"{module}.{suffix}", dtype, shape, list(names), stack)))
    modules = set(layout.adapters)
    for name, (_, info) in layout.tensors.items():
        if name in adapter_names:
            continue
        owner = next((m for m in modules if name.startswith(m + ".")), None)
        ours = f"{owner}.ffn.{name[len(owner) + 1:]}" if owner else name
        entries.append((order[name], _Canonical(ours, info.dtype, info.shape, [name], read(name))))
    return [entry for _, entry in sorted(entries, key=lambda item: item[0])]


def _target_tensors(canonical: list[_Canonical], layout: CheckpointLayout, flavor) -> list[_Output]:
    outputs: list[_Output] = []
    modules = set(layout.adapters)
    for source in canonical:
        if flavor is None:
            outputs.append(_Output(source.name, source.dtype, source.shape, source))
            continue
        owner, _, suffix = source.name.rpartition(".")
        if ".ffn." in source.name and source.name.partition(".ffn.")[0] in modules:
            module, _, rest = source.name.partition(".ffn.")
            outputs.append(_Output(f"{module}.{rest}", source.dtype, source.shape, source))
        elif source.name.endswith(".router.weight") and source.name[: -len(".router.weight")] in modules:
            outputs.append(_Output(official_router_key(source.name[: -len(".router.weight")]), source.dtype,
                                   source.shape, source))
        elif owner in modules and suffix in ("w_down", "w_up"):
            E, inner, outer = source.shape
            part = "down" if suffix == "w_down" else "up"
            for e in range(E):
                outputs.append(_Output(official_expert_key(owner, e, part, flavor.expert_naming), source.dtype,
                                       (outer, inner), source, pick=lambda t, e=e: t[e].t()))
        else:
            outputs.append(_Output(source.name, source.dtype, source.shape, source))
    for out in outputs:
        out.canonical.readers += 1
    return outputs


def _copy_side_files(layout: CheckpointLayout, staging: Path) -> None:
    """Tokenizer, generation config and other files; not the weights, the config or remote code."""
    skip = layout.files.names | {"config.json"}
    for path in sorted(layout.directory.iterdir()):
        if path.is_file() and path.name not in skip and path.suffix != ".py":
            shutil.copy2(path, staging / path.name)


class _Progress:
    """A tqdm byte counter when tqdm is installed (and wanted), else one line per shard on stderr."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit="B", unit_scale=True, desc="convert", file=sys.stderr)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)
        elif self._enabled:
            print(f"convert: {text}", file=sys.stderr)

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
