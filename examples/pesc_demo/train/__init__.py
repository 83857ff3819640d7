"""Training utilities behind examples/finetune.py and examples/generate.py.

- :mod:`.tokenizer`: the download-free byte-level tokenizer (and a loader for HF tokenizers).
- :mod:`.tiny_llama`: the embedded default model config (a few million parameters).
- :mod:`.encoding`: chat-template rendering with the prompt masked; padded batches.
- :mod:`.batching`: deterministic rank-sharded batch streams.
- :mod:`.loop`: the training loop (answer loss, router loss, tokens/s), LR schedule.
- :mod:`.evaluate`: greedy generation and held-out exact match.
- :mod:`.methods`: PESC / LoRA / full fine-tuning, parameter counts, checkpoints.
- :mod:`.models`: device, dtype and base-model loading (optionally 4-bit).
- :mod:`.distributed`: torchrun process groups, DDP / FSDP2 wrapping.
- :mod:`.report`: metrics.json, loss curves, comparison tables.
- :mod:`.pipeline`: the stages of finetune.py as functions.

These modules import transformers / peft / matplotlib lazily where they can, so ``import
pesc_kernels`` stays light.
"""
