"""Integrations of pesc_kernels with other libraries, one module each, imported explicitly.

- :mod:`pesc_kernels.integrations.transformers`: pesc as a Hugging Face transformers MoE backend
  (``experts_implementation="pesc"``), router patching and the balancing loss. Needs the ``[hf]``
  extra; ``import pesc_kernels`` never imports transformers.
"""
