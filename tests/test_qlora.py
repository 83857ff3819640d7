"""The paper's QLoRA recipe on the CPU: NF4 base (bitsandbytes), LoRA on the projections, PESC routers
and adapters in the compute dtype; training, saving, merging into the dequantised base as the official
official merge script does, exporting with save_official; and bitsandbytes' CPU shape rule.

bitsandbytes is a test requirement (requirements-dev.txt), so nothing here is skipped without it.
"""
import copy
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bitsandbytes
import pytest
import torch
from _official_fixtures import write_official
from bitsandbytes.functional import _convert_weight_packed_for_cpu
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

import pesc_kernels
from pesc_kernels import PESCConfig, craft, from_pretrained, load_pesc, save_official
from pesc_kernels.quantized import check_cpu_4bit_layout, cpu_4bit_layout_problems, linear_4bit_layers

ROOT = Path(__file__).resolve().parents[1]
README_MARKER = "<!-- README example: run by tests/test_qlora.py -->"
# As the official training script.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Projection sizes that are multiples of 64, so the model is valid on every CPU (see pesc_kernels.quantized).
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)


def nf4(dtype):
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=True)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SIZES)).save_pretrained(path)
    return path


def tokens(seed, batch=4, length=16, vocab=SIZES["vocab_size"]):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ the CPU shape rule
def quantised_linear(in_features, out_features, nested):
    layer = bitsandbytes.nn.Linear4bit(in_features, out_features, bias=False, quant_type="nf4",
                                       compress_statistics=nested)
    layer.weight = bitsandbytes.nn.Params4bit(torch.randn(out_features, in_features), requires_grad=False,
                                              quant_type="nf4", compress_statistics=nested)
    return layer.to("cpu")  # quantises


def test_the_cpu_rule_is_what_bitsandbytes_packing_accepts():
    """cpu_4bit_layout_problems agrees with bitsandbytes' own packing for the AVX512-BF16 path."""
    shapes = itertools.product([48, 64, 100, 128, 172, 192], [16, 32, 48, 100, 172, 256], [False, True])
    for in_features, out_features, nested in shapes:
        layer = quantised_linear(in_features, out_features, nested)
        try:
            _convert_weight_packed_for_cpu(layer.weight.data.clone(), copy.deepcopy(layer.weight.quant_state))
            packs = True
        except (AssertionError, RuntimeError):
            packs = False
        wrapper = torch.nn.Sequential(layer)
        assert packs == (not cpu_4bit_layout_problems(wrapper)), (in_features, out_features, nested)
        assert packs == (out_features % 32 == 0 and in_features % 64 == 0)


def test_training_path_works_for_any_shape_and_the_check_names_the_layer(tmp_path):
    torch.manual_seed(0)
    odd = tmp_path / "odd"
    LlamaForCausalLM(LlamaConfig(**{**SIZES, "intermediate_size": 172})).save_pretrained(odd)
    model = LlamaForCausalLM.from_pretrained(odd, quantization_config=nf4(torch.float32), device_map="cpu")
    assert len(linear_4bit_layers(model)) == 14
    craft(model, PESCConfig(num_experts=4, top_k=2, adapter_dim=8))
    out = model(input_ids=tokens(0), labels=tokens(0))  # forward and backward work whatever the shapes
    out.loss.backward()
    assert all(p.grad is not None for p in pesc_kernels.pesc_parameters(model))
    check_cpu_4bit_layout(model)  # bitsandbytes' packed path is off on this layer set: nothing to refuse
    problems = cpu_4bit_layout_problems(model)
    assert problems[0] == "model.layers.0.mlp.ffn.gate_proj (out_features=172 is not a multiple of 32)"
    assert "model.layers.0.mlp.ffn.down_proj (in_features=172 is not a multiple of the block size 64)" in problems

    # What happens on a CPU with AVX512-BF16, where bitsandbytes turns its packed inference path on:
    for _, layer in linear_4bit_layers(model):
        layer.support_avx512bf16_for_cpu = True
    with pytest.raises(ValueError, match=re.escape("model.layers.0.mlp.ffn.gate_proj (out_features=172 is not a "
                                                   "multiple of 32)")):
        check_cpu_4bit_layout(model)
    model.eval()
    with torch.no_grad(), pytest.raises(AssertionError, match="N must be divisible by block_n"):
        model(input_ids=tokens(0))  # bitsandbytes' own failure, naming no layer


def test_from_pretrained_quantises_and_checks(tmp_path, monkeypatch):
    official = write_official(tmp_path / "ckpt", flavor="camelidae", shards=2)  # hidden 48, intermediate 100
    model = from_pretrained(official.directory, quantization_config=nf4(torch.bfloat16), device_map="cpu",
                            dtype=torch.bfloat16)
    assert len(linear_4bit_layers(model)) == 7 * 3
    assert {p.dtype for p in pesc_kernels.pesc_parameters(model)} == {torch.bfloat16}  # the activations' dtype
    reference = from_pretrained(official.directory)
    with torch.no_grad():
        ids = tokens(1, vocab=official.config["vocab_size"])
        got, want = model(input_ids=ids).logits.float(), reference(input_ids=ids).logits
    assert (got - want).abs().max() < 0.2 * want.abs().max()  # NF4 + bf16 of the same model
    for name in ("router", "w_down", "w_up"):  # the adapters are the checkpoint's, exactly in bf16
        layer = dict(pesc_kernels.crafting.pesc_layers(model))["model.layers.1.mlp"]
        exact = dict(pesc_kernels.crafting.pesc_layers(reference))["model.layers.1.mlp"]
        a, b = (getattr(m, name).weight if name == "router" else getattr(m, name) for m in (layer, exact))
        assert torch.equal(a, b.to(torch.bfloat16))
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)  # as on an AVX512-BF16 CPU
    with pytest.raises(ValueError, match=re.escape("model.layers.0.self_attn.k_proj (out_features=24 is not a "
                                                   "multiple of 32 and in_features=48 is not a multiple of the "
                                                   "block size 64)")):
        from_pretrained(official.directory, quantization_config=nf4(torch.float32), device_map="cpu")


# ------------------------------------------------------------------------------ the recipe, end to end
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_qlora_lora_pesc_train_save_merge_export(tmp_path, dense_dir, dtype, tolerance):
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(dense_dir, quantization_config=nf4(dtype), device_map="cpu", dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS))
    craft(model, PESCConfig.camelidae(num_experts=4, adapter_dim=8))  # after peft: see craft()
    for parameter in pesc_kernels.pesc_parameters(model):  # the 4-bit FFN has no float dtype to copy: the paper's
        parameter.data = parameter.data.to(dtype)          # routers and adapters are in the compute dtype
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.endswith(("router.weight", "w_down", "w_up")) for n in trainable)
    assert len(linear_4bit_layers(model)) == 14

    before = model.eval()(input_ids=tokens(9)).logits.detach().float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    batch = tokens(1)
    for _ in range(4):
        out = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=tokens(9)).logits.float()
    scale = trained.abs().max().item()
    assert (trained - before).abs().max().item() > 20 * tolerance * scale  # training changed the model

    model.save_pretrained(tmp_path / "lora")  # peft: the LoRA weights only
    save_official(model, tmp_path / "moe", "camelidae", adapters_only=True)  # moe_model.bin
    assert (tmp_path / "lora" / "adapter_config.json").is_file() and (tmp_path / "moe" / "moe_model.bin").is_file()

    # Merge as the official merge script does: the base (here: dequantised NF4, the weights training saw), the PESC
    # adapters, then the LoRA merged into the projections; export the official layout.
    base = LlamaForCausalLM.from_pretrained(dense_dir, quantization_config=nf4(dtype), device_map="cpu", dtype=dtype)
    base = base.dequantize()
    assert not linear_4bit_layers(base) and base.model.layers[0].mlp.up_proj.weight.dtype == dtype
    load_pesc(base, tmp_path / "moe")
    merged = PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload()
    save_official(merged, tmp_path / "exported", "camelidae")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    got = (config["model_type"], config["num_experts"], config["topk"], config["adapter_dim"])
    assert got == ("camelidae", 4, 2, 8)
    assert config["moe_dtype"] == str(dtype).removeprefix("torch.")

    exported = from_pretrained(tmp_path / "exported", dtype=dtype)
    with torch.no_grad():
        final = exported(input_ids=tokens(9)).logits.float()
    assert (final - trained).abs().max().item() <= tolerance * scale


# ------------------------------------------------------------------------------ the example script
def test_finetune_example_trains_with_a_4bit_base_on_cpu(tmp_path):
    from pesc_demo.train.models import load_base

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SIZES)).save_pretrained(tmp_path / "dense")
    assert len(linear_4bit_layers(load_base(tmp_path / "dense", torch.device("cpu"), torch.float32, True))) == 14

    env = {**os.environ, "PYTHONPATH": str(Path(pesc_kernels.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "2"}
    args = [sys.executable, str(ROOT / "examples" / "finetune.py"), "--method", "pesc", "--baseline", "lora",
            "--load-in-4bit", "--device", "cpu", "--out", str(tmp_path / "out"), "--dense-steps", "3", "--steps", "3",
            "--batch-size", "4", "--train-per-task", "8", "--heldout-per-task", "1", "--max-new-tokens", "3",
            "--no-progress", "--num-experts", "4", "--top-k", "2", "--adapter-dim", "4"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("pesc", "lora"):
        metrics = json.loads((tmp_path / "out" / method / "metrics.json").read_text())
        assert metrics["load_in_4bit"] is True and metrics["device"] == "cpu"
        assert [h["step"] for h in metrics["history"]] == [1, 2, 3] and all(h["loss"] > 0 for h in metrics["history"])


def test_readme_qlora_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(re.escape(README_MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "expected one README example for the QLoRA recipe"
    assert text.index("## Running official Camelidae and Sparsetral checkpoints") < text.index(README_MARKER) \
        < text.index("## Benchmarks")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_qlora"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "qlora-camelidae" / "config.json").is_file()
    assert linear_4bit_layers(namespace["model"])
