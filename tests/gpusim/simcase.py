"""Cases of the simulated-GPU runner: building them, writing a batch, reading the results back.

A case is one call of one torch-free launcher (runner op name, integer/float parameters, named
buffers). The file formats are documented in runner/case_file.h; this module is their only Python
side. Buffers are torch tensors (inputs), ``Out(nbytes)`` (outputs, filled with the canary before
the launch) or ``None`` (an optional pointer passed as nullptr).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # pesc::DType
CANARY_WORD = 0x7FFFFFA5  # device_buffers.h: every guard byte and every output starts as this word
# cudaError_t values the launchers may return (CUDA's driver_types.h)
CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NO_KERNEL_IMAGE = 209


@dataclasses.dataclass(frozen=True)
class Out:
    """An output buffer of `nbytes` bytes; `shift` bytes past the aligned start (misalignment)."""

    nbytes: int
    shift: int = 0


@dataclasses.dataclass(frozen=True)
class In:
    """An input tensor placed `shift` bytes past the aligned start of its buffer."""

    tensor: torch.Tensor
    shift: int = 0


def out_like(shape, dtype, shift=0) -> Out:
    n = 1
    for s in shape:
        n *= s
    return Out(n * torch.empty((), dtype=dtype).element_size(), shift)


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8).numpy().tobytes()


def bytes_tensor(data: bytes, dtype: torch.dtype, shape) -> torch.Tensor:
    """The inverse of tensor_bytes (a copy, writable)."""
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dtype == torch.bool:
        return raw.to(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape).clone()


def canary_at(offset: int, nbytes: int) -> bytes:
    """The canary bytes a buffer holds at [offset, offset + nbytes) of its data when nothing wrote
    there (`offset` counts from the start of the buffer's shift region, which begins 4-aligned)."""
    word = CANARY_WORD.to_bytes(4, "little")
    return (word * ((offset + nbytes) // 4 + 1))[offset:offset + nbytes]


@dataclasses.dataclass
class Case:
    """One launcher call. `check(result)` asserts on the runner's CaseResult; `cost` is a rough
    estimate of its simulated work (arbitrary units) used to balance the shards."""

    id: str
    op: str
    ints: dict
    buffers: dict  # name -> torch.Tensor | In | Out | None
    check: object
    floats: dict = dataclasses.field(default_factory=dict)
    cost: float = 1.0


@dataclasses.dataclass
class BufferResult:
    kind: str  # in | out | work
    guards_ok: bool
    intact: bool
    data: bytes

    def as_tensor(self, dtype, shape) -> torch.Tensor:
        return bytes_tensor(self.data, dtype, shape)


@dataclasses.dataclass
class CaseResult:
    launch: int
    sync: int
    buffers: dict  # name -> BufferResult


def write_batch(cases, manifest: Path) -> None:
    """Writes MANIFEST (.txt) and its .bin blob."""
    assert manifest.suffix == ".txt"
    lines, blob = [], bytearray()
    for case in cases:
        assert case.id.replace("_", "").replace("-", "").replace(".", "").isalnum(), case.id
        lines += [f"case {case.id}", f"op {case.op}"]
        lines += [f"int {k} {int(v)}" for k, v in case.ints.items()]
        lines += [f"float {k} {float(v).hex()}" for k, v in case.floats.items()]
        for name, buf in case.buffers.items():
            if buf is None:
                lines.append(f"null {name}")
            elif isinstance(buf, Out):
                lines.append(f"out {name} {buf.nbytes} {buf.shift}")
            else:
                spec = buf if isinstance(buf, In) else In(buf)
                data = tensor_bytes(spec.tensor)
                lines.append(f"in {name} {len(blob)} {len(data)} {spec.shift}")
                blob += data
        lines.append("end")
    manifest.write_text("\n".join(lines) + "\n")
    manifest.with_suffix(".bin").write_bytes(bytes(blob))


def read_results(prefix: Path) -> dict:
    """Case id -> CaseResult for every case the runner completed (its `end` line was written)."""
    text = prefix.with_suffix(".txt")
    if not text.exists():
        return {}
    blob = prefix.with_suffix(".bin").read_bytes()
    results, current, case_id = {}, None, None
    for line in text.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "case":
            case_id, current = words[1], CaseResult(-1, -1, {})
        elif words[0] == "launch":
            current.launch = int(words[1])
        elif words[0] == "sync":
            current.sync = int(words[1])
        elif words[0] == "buf":
            name, kind, guards, intact, offset, size = words[1:]
            offset, size = int(offset), int(size)
            if offset + size > len(blob):  # written before a crash cut the blob short
                current = None
                break
            current.buffers[name] = BufferResult(kind, guards == "1", intact == "1", blob[offset:offset + size])
        elif words[0] == "end":
            results[case_id] = current
            current = None
    return results
