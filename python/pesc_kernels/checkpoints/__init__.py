"""Checkpoints: ours (adapter-only), official PESC layouts in and out, whole-model loading, conversion.

- :mod:`.adapters`: :func:`save_pesc` / :func:`load_pesc`, the routers and adapters of a crafted
  model (``pesc_config.json`` + ``pesc_adapters.safetensors``); ``load_pesc`` also reads the official
  adapter-only ``moe_model.bin``.
- :mod:`.official`: the official Camelidae / Sparsetral / Qwen2idae configurations and how they map
  to a stock Hugging Face config plus a :class:`~pesc_kernels.PESCConfig`; :mod:`.official_keys`: the
  official and our tensor names.
- :mod:`.pretrained`: :func:`from_pretrained`, a crafted stock model from either kind of directory.
- :mod:`.export`: :func:`save_official`; :mod:`.convert`: ``python -m pesc_kernels convert``.
- :mod:`.weight_files` (streaming reads and writes of weight shards), :mod:`.layout` (what a
  directory holds, read from headers only).

Loading whole models needs transformers (``pip install pesc_kernels[hf]``); adapter checkpoints
need safetensors only.
"""
from .adapters import load_pesc, save_pesc
from .export import save_official
from .pretrained import from_pretrained

__all__ = ["save_pesc", "load_pesc", "save_official", "from_pretrained"]
