"""The demo's training utilities and data, used by examples/finetune.py and examples/generate.py.

- :mod:`pesc_demo.data`: the embedded synthetic instruction tasks (exact checkers, train/held-out
  splits) and JSONL / chat-JSONL parsing.
- :mod:`pesc_demo.train`: the embedded tiny Llama and byte tokenizer, prompt-masked training loop,
  DDP/FSDP helpers, evaluation and reports.

Not part of the ``pesc_kernels`` library: these need transformers, peft, tqdm and matplotlib
(``pip install pesc_kernels[examples]``).
"""
