"""Every benchmark case, collected from the family modules (which never import this module back)."""
from __future__ import annotations

from . import adapter, gating, hf_moe, layer, permute
from .case import Case

FAMILIES = {"gating": gating, "permute": permute, "adapter": adapter, "layer": layer, "hf_moe": hf_moe}


def cases_for(family: str | None = None, size: str = "full") -> list[Case]:
    """The cases of one family (all when None) that belong to the size set ``size``."""
    modules = FAMILIES.values() if family is None else [FAMILIES[family]]
    return [c for module in modules for c in module.cases() if size in c.sizes]
