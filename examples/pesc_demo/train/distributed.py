"""Multi-process training under torchrun: process group, DDP / FSDP wrapping and consolidation.

``torchrun --nproc_per_node=N examples/finetune.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
process group then uses NCCL on CUDA and gloo on CPU. Models are wrapped with
DistributedDataParallel, or with FSDP2 (``fully_shard`` on every decoder layer, then the root) when
``--fsdp`` is given. The training module is :class:`LossAndLogits`, which returns a plain
``(loss, logits)`` tuple: DDP rebuilds dataclass outputs field by field after its forward, and that
fails on outputs that carry extra keys (a crafted model's ``aux_loss``/``z_loss``); it also keeps the
KV cache out of training.

Evaluation and checkpointing need whole parameters: :func:`consolidated` unshards an FSDP model
(and keeps it unsharded through forwards) for the duration of a ``with`` block, so generation runs
on each rank without collectives and code reading the modules' parameters (``save_pesc``) sees
whole tensors. ``state_dict()`` still returns shards, so :func:`full_state_dict` gathers a whole
state dict for the writers built on it (``save_pretrained``). In the block, too,
:func:`trainable_digest` hashes each rank's trainable weights, so a run records whether its replicas
ended bitwise identical.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _decoder_layers(model):
    """The repeated transformer blocks of a (possibly peft-wrapped) HF causal LM."""
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
              and type(m[0]).__name__.endswith("DecoderLayer")]
    if not blocks:
        raise ValueError("--fsdp: found no decoder layer list (a ModuleList of *DecoderLayer) to shard")
    return list(blocks[0])


class LossAndLogits(torch.nn.Module):
    """A causal LM as a training module: ``forward(**batch) -> (loss, logits)``, without KV cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        outputs = self.model(**batch, use_cache=False)
        return outputs.loss, outputs.logits


def wrap(model, info: DistInfo, device: torch.device, *, fsdp: bool = False):
    """The training module for ``model``: :class:`LossAndLogits`, under DDP or with the model
    sharded by FSDP2 in a multi-process run."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not info.enabled:
            raise ValueError("--fsdp needs several processes: launch with torchrun --nproc_per_node=N")
        mesh = init_device_mesh(device.type, (info.world_size,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return LossAndLogits(model)
    if not info.enabled:
        return LossAndLogits(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossAndLogits(model), device_ids=device_ids)


def unwrap(wrapped):
    """The model inside :func:`wrap`'s training module (FSDP2 shards it in place)."""
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        wrapped = wrapped.module
    return wrapped.model if isinstance(wrapped, LossAndLogits) else wrapped


def _fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def trainable_digest(model) -> str:
    """sha256 over the names and exact bytes of the trainable parameters (call on whole parameters)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            # a copy: exporting a tensor to numpy pins its storage, which FSDP must free on reshard
            data = parameter.detach().to("cpu", copy=True).contiguous()
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order (a one-element list when single-process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def full_state_dict(wrapped):
    """The whole-model state dict of an FSDP2-sharded model, gathered to rank 0 on the CPU (other
    ranks get an empty dict; a collective, so every rank must call it), or None when the model is not
    sharded (its own ``state_dict()`` is then whole). Checkpoint writers that go through
    ``state_dict()`` (``save_pretrained`` of transformers and peft) take it as ``state_dict=``."""
    model = unwrap(wrapped)
    if not _fsdp_modules(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def consolidated(wrapped):
    """Yields the model of a training module; an FSDP2-sharded one holds whole (unsharded)
    parameters on every rank inside the block."""
    model = unwrap(wrapped)
    modules = _fsdp_modules(model)
    if not modules:
        yield model
        return
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            # FSDP2's defaults: the root keeps its parameters after forward, inner modules reshard.
            module.set_reshard_after_forward(module is not model, recurse=False)
