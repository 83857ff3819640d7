"""The weight files of a Hugging Face checkpoint directory, read and written one tensor at a time.

A directory holds either one file (``model.safetensors`` or ``pytorch_model.bin``) or shards named
by an index (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``: ``{"weight_map":
{tensor name: shard file}}``). :func:`find_weight_files` lists them, :class:`ShardReader` opens one
shard and returns single tensors, and :class:`SafetensorsWriter` writes a safetensors file tensor by
tensor from a layout declared up front.

Why not ``safetensors.safe_open`` / ``save_file``: ``safe_open`` maps the whole file, and every page
it touches stays in the process's resident set until the file is closed, while ``save_file`` needs
every output tensor in memory at once. Converting a shard with them costs about twice the shard's
size in RAM; reading with ``seek`` + ``readinto`` and writing each tensor as soon as it exists costs
about one tensor. The safetensors layout (8-byte little-endian header length, a JSON header of
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` plus ``"__metadata__"``, then the
tensors' bytes back to back in header order) is the library's documented format; files written here
load with ``safetensors`` and ``transformers``.

``.bin`` shards (torch pickles) are opened with ``torch.load(mmap=True)`` where their format allows,
so tensors are read lazily; a legacy (non-zip) pickle is read whole, one shard at a time.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_HEADER_LIMIT = 100 * 2**20  # safetensors refuses headers above 100 MB


@dataclass(frozen=True)
class WeightFiles:
    """The weight files of a checkpoint directory: their kind and the shards in index order."""

    directory: Path
    kind: str  # "safetensors" or "bin"
    shards: tuple[Path, ...]
    index: Path | None  # the index file, None for a single-file checkpoint

    @property
    def names(self) -> set[str]:
        """File names that belong to the weights (shards and index), e.g. to skip when copying the rest."""
        return {p.name for p in self.shards} | ({self.index.name} if self.index else set())


def find_weight_files(directory: str | os.PathLike) -> WeightFiles:
    """The weights of a Hugging Face checkpoint directory (safetensors preferred over .bin)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; expected a Hugging Face checkpoint directory")
    layouts = (("safetensors", SAFETENSORS_NAME, SAFETENSORS_INDEX), ("bin", BIN_NAME, BIN_INDEX))
    for kind, single, index_name in layouts:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{index} is not a checkpoint index with a 'weight_map' ({error})") from None
            shards = tuple(dict.fromkeys(directory / name for name in weight_map.values()))
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} names shards that are not in {directory}: {missing}")
            return WeightFiles(directory, kind, shards, index)
        if (directory / single).is_file():
            return WeightFiles(directory, kind, (directory / single,), None)
    raise FileNotFoundError(f"{directory} holds no model weights: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX}, "
                            f"{BIN_NAME} or {BIN_INDEX}")


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0  # byte range in a safetensors file's data section
    end: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """``(tensors, metadata, data_start)`` of a safetensors file, without reading any tensor."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path} is not a safetensors file (header length {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file ({error})") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know")
        begin, end = entry["data_offsets"]
        tensors[name] = TensorInfo(_DTYPES[entry["dtype"]], tuple(entry["shape"]), begin, end)
    return tensors, metadata, 8 + length


class ShardReader:
    """One weight shard: ``keys()``, ``info(name)`` (dtype and shape) and ``get(name)`` (a CPU tensor).

    Use as a context manager. Reading a tensor costs its own size only (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        self._state = None
        if self.path.suffix == ".safetensors":
            self._tensors, self.metadata, self._data_start = read_safetensors_header(self.path)
            self._file = open(self.path, "rb")
        else:
            self._state = _load_pickle(self.path)
            self._tensors = {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in self._state.items()}
            self.metadata = {}

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        return self._tensors[name]

    def get(self, name: str) -> torch.Tensor:
        if self._state is not None:
            return self._state[name]
        info = self._tensors[name]
        buffer = torch.empty(info.end - info.begin, dtype=torch.uint8)
        self._file.seek(self._data_start + info.begin)
        if buffer.numel() and self._file.readinto(memoryview(buffer.numpy())) != buffer.numel():
            raise ValueError(f"{self.path} is truncated: tensor {name} ends past the end of the file")
        return buffer.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._state = None

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A .bin state dict (weights only), memory-mapped when it is in torch's zip format."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):  # only the legacy (non-zip) format cannot be mapped
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    return state


def tensor_infos(files: WeightFiles) -> dict[str, tuple[int, TensorInfo]]:
    """``{tensor name: (shard number, info)}`` over every shard (headers only for safetensors)."""
    found: dict[str, tuple[int, TensorInfo]] = {}
    for number, shard in enumerate(files.shards):
        with ShardReader(shard) as reader:
            for name in reader.keys():
                if name in found:
                    raise ValueError(f"{files.directory}: tensor {name} is stored twice "
                                     f"({files.shards[found[name][0]].name} and {shard.name})")
                found[name] = (number, reader.info(name))
    return found


# ------------------------------------------------------------------------------------------ writing
class SafetensorsWriter:
    """Writes one safetensors file whose tensors (names, dtypes, shapes, in order) are known up front.

    ``write(name, tensor)`` must be called for every declared tensor in the declared order; ``close()``
    checks that all were written. The file is complete only after ``close()``.
    """

    def __init__(self, path: str | os.PathLike, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._expected = []
        for name, dtype, shape in layout:
            if dtype not in _DTYPE_NAMES:
                raise ValueError(f"safetensors cannot store tensor {name} of dtype {dtype}")
            size = TensorInfo(dtype, tuple(shape)).nbytes
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._expected.append((name, dtype, tuple(shape)))
            offset += size
        if len(header) - 1 != len(self._expected):
            raise ValueError("SafetensorsWriter: the layout names a tensor twice")
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._expected):
            raise ValueError(f"{self.path}: tensor {name} was not declared")
        want_name, want_dtype, want_shape = self._expected[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (want_name, want_dtype, want_shape):
            raise ValueError(f"{self.path}: expected {want_name} {want_dtype} {list(want_shape)} next, got "
                             f"{name} {tensor.dtype} {list(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._next != len(self._expected):
            raise ValueError(f"{self.path}: {len(self._expected) - self._next} declared tensors were never written "
                             f"(first: {self._expected[self._next][0]})")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()
            self._file = None


def shard_file_names(count: int) -> list[str]:
    """Hugging Face's shard names: ``model.safetensors`` alone, else ``model-0000i-of-0000n.safetensors``."""
    if count == 1:
        return [SAFETENSORS_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(directory: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` for a sharded checkpoint."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def check_new_directory(destination: str | os.PathLike) -> Path:
    """``destination`` as a Path; FileExistsError unless it is absent or an empty directory."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise FileExistsError(f"{destination} already exists and is not an empty directory; "
                              "choose a new output path or remove it first")
    return destination


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike):
    """Yield a temporary directory next to ``destination``; rename it to ``destination`` on success.

    ``destination`` must not exist (an empty directory is replaced). On any error the temporary
    directory is removed, so a partial output never appears under the destination's name.
    """
    destination = check_new_directory(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield staging
        if destination.exists():
            destination.rmdir()
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
