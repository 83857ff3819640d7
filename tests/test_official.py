"""Official PESC checkpoints (Camelidae, Sparsetral, Qwen2idae) in and out of pesc_kernels.

The official checkpoints are written by tests/_official_fixtures.py in the official key layout
(random non-zero adapters, ModuleDict and ModuleList naming, safetensors and .bin, one file and
sharded); imports are checked against an independent float64 implementation of the official
forward and against a model crafted directly with the same tensors, round trips bit for bit.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _official_fixtures import (
    BASE_OF,
    BASES,
    SIZES,
    expert_key,
    official_forward,
    router_key,
    write_moe_model_bin,
    write_official,
)
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

import pesc_kernels
from pesc_kernels import PESCConfig, craft, from_pretrained, load_pesc, save_official
from pesc_kernels.__main__ import main as cli
from pesc_kernels.checkpoints.convert import convert
from pesc_kernels.crafting import pesc_layers

README = Path(__file__).resolve().parent.parent / "README.md"
README_MARKER = "<!-- README example: run by tests/test_official.py -->"
STOCK_CLASS = {"camelidae": LlamaForCausalLM, "sparsetral": MistralForCausalLM, "qwen2idae": Qwen2ForCausalLM}
TOKENS = torch.randint(0, SIZES["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(5))

# (flavor, model_type written in config.json (None: the flavor's), expert naming, shards, file format)
CASES = [
    ("camelidae", None, "dict", 1, "safetensors"),
    ("camelidae", None, "dict", 3, "safetensors"),
    ("camelidae", "llama", "list", 2, "bin"),  # model_type as the official classes' save_pretrained writes it
    ("sparsetral", None, "list", 3, "bin"),
    ("sparsetral", "mistral", "dict", 1, "safetensors"),
    ("qwen2idae", None, "dict", 2, "safetensors"),
]
CASE_IDS = [f"{f}-{t or f}-{n}-{s}shard-{fmt}" for f, t, n, s, fmt in CASES]


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def all_tensors(directory) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    for path in sorted(directory.glob("pytorch_model*.bin")):
        tensors.update(torch.load(path, weights_only=True))
    return tensors


def official_name(name: str, naming: str) -> str:
    """An official tensor name in the given expert naming."""
    slot = r"expert_\1" if naming == "dict" else r"\1"
    return re.sub(r"experts\.(?:expert_)?(\d+)\.", f"experts.{slot}.", name)


def crafted_directly(official, pesc: PESCConfig, flavor: str):
    """A stock model with the fixture's dense weights, crafted, its adapters copied in by hand."""
    config_cls, model_cls = BASES[BASE_OF[flavor]]
    model = model_cls(config_cls(**SIZES, tie_word_embeddings=False, rope_theta=official.config["rope_theta"]))
    model.load_state_dict(official.dense)
    craft(model, pesc)
    with torch.no_grad():
        for name, layer in pesc_layers(model):
            router, downs, ups = official.adapters[int(name.split(".")[2])]
            layer.router.weight.copy_(router)
            layer.w_down.copy_(torch.stack([w.t() for w in downs]))
            layer.w_up.copy_(torch.stack([w.t() for w in ups]))
    return model.eval()


# ------------------------------------------------------------------------------------- import
@pytest.mark.parametrize("flavor,model_type,naming,shards,fmt", CASES, ids=CASE_IDS)
def test_import_computes_the_official_forward(tmp_path, flavor, model_type, naming, shards, fmt):
    official = write_official(tmp_path / "ckpt", flavor=flavor, model_type=model_type, naming=naming, shards=shards,
                              fmt=fmt, experts=5, topk=3, rank=6, scaling=0.75, seed=3)
    model = from_pretrained(official.directory)
    assert type(model) is STOCK_CLASS[flavor] and not model.training
    pesc = PESCConfig.from_dict(model.config.pesc)
    assert (pesc.num_experts, pesc.top_k, pesc.adapter_dim, pesc.scaling) == (5, 3, 6, 0.75)
    assert (pesc.activation, pesc.normalize_top_k) == ("gelu", True)
    expected = official_forward(official, TOKENS, qkv_bias=flavor == "qwen2idae")
    got = logits(model).double()
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 2e-6 * scale, "not the official forward to fp32 rounding"

    direct = crafted_directly(official, pesc, flavor)
    assert torch.equal(logits(direct), logits(model))
    dense = BASES[BASE_OF[flavor]][1](model.config.__class__(**SIZES, tie_word_embeddings=False))
    dense.load_state_dict(official.dense)
    assert (logits(dense.eval()).double() - expected).abs().max().item() > 1e-3 * scale  # 500x the tolerance


def test_official_fields_become_the_pesc_config(tmp_path):
    camelidae = from_pretrained(write_official(tmp_path / "c", flavor="camelidae").directory)
    assert PESCConfig.from_dict(camelidae.config.pesc) == PESCConfig(
        num_experts=4, top_k=2, adapter_dim=8, scaling=0.5, adapter_dropout=0.1, aux_loss_coef=0.01)
    sparsetral = from_pretrained(write_official(tmp_path / "s", flavor="sparsetral").directory)
    assert PESCConfig.from_dict(sparsetral.config.pesc) == PESCConfig(
        num_experts=4, top_k=2, adapter_dim=8, scaling=0.5, adapter_dropout=0.05, aux_loss_coef=0.02)
    assert not hasattr(sparsetral.config, "num_experts") and not hasattr(sparsetral.config, "auto_map")


def test_rope_base_is_what_each_official_code_computes(tmp_path):
    # wuhy68's Camelidae ignores rope_theta (base 10000); Sparsetral and serp-ai's Camelidae honour it.
    wuhy68 = write_official(tmp_path / "w", flavor="camelidae", config={"rope_theta": 1e6})
    with pytest.warns(UserWarning, match="rope_theta is 1000000.0 but the official Camelidae code ignores it"):
        model = from_pretrained(wuhy68.directory)
    assert model.config.rope_parameters["rope_theta"] == 10000.0
    for theta, close in ((10000.0, True), (1e6, False)):
        error = (logits(model).double() - official_forward(wuhy68, TOKENS, rope_theta=theta)).abs().max().item()
        assert (error < 1e-5) == close
    serp = write_official(tmp_path / "serp", flavor="camelidae", model_type="llama", naming="list",
                          config={"rope_theta": 1e6, "adapter_dropout": 0.0})
    sparsetral = write_official(tmp_path / "s", flavor="sparsetral", config={"rope_theta": 1e6})
    for official in (serp, sparsetral):
        model = from_pretrained(official.directory)
        error = (logits(model).double() - official_forward(official, TOKENS, rope_theta=1e6)).abs().max().item()
        assert error < 1e-5


def test_rope_scaling_is_mapped_or_dropped_like_the_official_code(tmp_path):
    scaling = {"rope_scaling": {"type": "linear", "factor": 2.0}}
    linear = write_official(tmp_path / "l", flavor="camelidae", config=scaling)
    parameters = from_pretrained(linear.directory).config.rope_parameters
    assert (parameters["rope_type"], parameters["factor"], parameters["rope_theta"]) == ("linear", 2.0, 10000.0)
    ignored = write_official(tmp_path / "s", flavor="sparsetral", config=scaling)
    with pytest.warns(UserWarning, match="is ignored by the official sparsetral code"):
        model = from_pretrained(ignored.directory)
    assert model.config.rope_parameters["rope_type"] == "default"


def test_transformers_arguments_pass_through(tmp_path):
    official = write_official(tmp_path / "ckpt", flavor="camelidae", shards=2)
    model, info = from_pretrained(official.directory, dtype=torch.bfloat16, device_map="cpu",
                                  attn_implementation="eager", output_loading_info=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager" and not info["missing_keys"] and not info["unexpected_keys"]
    reference = from_pretrained(official.directory)
    assert (logits(model).float() - logits(reference)).abs().max() < 0.05 * logits(reference).abs().max()


def test_pesc_layout_round_trips_through_save_pretrained(tmp_path):
    imported = from_pretrained(write_official(tmp_path / "ckpt", flavor="sparsetral", shards=2).directory)
    imported.save_pretrained(tmp_path / "ours")
    names = set(all_tensors(tmp_path / "ours"))
    assert "model.layers.0.mlp.ffn.gate_proj.weight" in names and not any(".ffn.ffn." in n for n in names)
    reloaded = from_pretrained(tmp_path / "ours")
    assert type(reloaded) is MistralForCausalLM and torch.equal(logits(reloaded), logits(imported))


# --------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("flavor,model_type,naming,shards,fmt", CASES, ids=CASE_IDS)
def test_official_to_ours_to_official_is_bitwise(tmp_path, flavor, model_type, naming, shards, fmt):
    dtype = torch.bfloat16 if shards == 3 else torch.float32
    official = write_official(tmp_path / "src", flavor=flavor, model_type=model_type, naming=naming, shards=shards,
                              fmt=fmt, dtype=dtype, seed=7)
    target = flavor  # a Llama-based checkpoint goes back to Camelidae, in its (ModuleDict) naming
    target_naming = {"camelidae": "dict", "sparsetral": "list", "qwen2idae": "dict"}[target]
    expected = {official_name(k, target_naming): v for k, v in official.tensors.items()}

    convert(official.directory, tmp_path / "ours", "pesc", progress=False)
    convert(tmp_path / "ours", tmp_path / "back", target, progress=False)
    back = all_tensors(tmp_path / "back")
    assert back.keys() == expected.keys()
    assert all(back[k].dtype == dtype and torch.equal(back[k], expected[k]) for k in expected)
    ours = all_tensors(tmp_path / "ours")
    assert ours["model.layers.1.mlp.w_down"].shape == (4, SIZES["hidden_size"], 8)
    assert torch.equal(ours["model.layers.1.mlp.w_up"][2], official.adapters[1][2][2].t())
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    for field in ("num_experts", "topk", "adapter_dim", "moe_scaling", "hidden_size", "num_hidden_layers",
                  "intermediate_size", "num_key_value_heads", "rope_theta", "vocab_size"):
        assert config[field] == official.config[field], field
    assert config["model_type"] == target
    assert config["auto_map"]["AutoModelForCausalLM"].startswith(f"modeling_{target}.")
    if target == "sparsetral":
        assert (config["adapter_dropout"], config["router_aux_loss_coef"]) == (0.05, 0.02)
    if shards > 1:  # the index names every tensor, and some layer's experts were split across input shards
        index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(expected)

    model = from_pretrained(official.directory, dtype=dtype)  # in memory: import, then save_official
    save_official(model, tmp_path / "saved", target, max_shard_size="20KB")
    saved = all_tensors(tmp_path / "saved")
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in expected)
    assert len(list((tmp_path / "saved").glob("*.safetensors"))) > 1


def test_tied_embeddings_are_written_once_and_tied_back(tmp_path):
    model = crafted_llama(tie_word_embeddings=True)
    craft(model, PESCConfig.camelidae(num_experts=4, adapter_dim=8))
    with torch.no_grad():
        for parameter in pesc_kernels.pesc_parameters(model):
            parameter.normal_(0, 0.2)
    save_official(model.eval(), tmp_path / "tied", "camelidae")
    names = set(all_tensors(tmp_path / "tied"))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    loaded = from_pretrained(tmp_path / "tied")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(loaded), logits(model))


def test_a_sharded_fixture_splits_a_layers_experts(tmp_path):
    official = write_official(tmp_path / "src", flavor="camelidae", shards=3)
    index = json.loads((official.directory / "model.safetensors.index.json").read_text())["weight_map"]
    layer_shards = [{index[expert_key(layer, e, part, "dict")] for e in range(4) for part in ("down", "up")}
                    for layer in range(SIZES["num_hidden_layers"])]
    assert any(len(files) > 1 for files in layer_shards)  # so the round trips above buffer a split layer


def test_save_official_adapters_only_is_what_the_training_script_saves(tmp_path):
    official = write_official(tmp_path / "src", flavor="sparsetral", naming="list")
    model = from_pretrained(official.directory)
    save_official(model, tmp_path / "moe", "sparsetral", adapters_only=True)
    assert sorted(p.name for p in (tmp_path / "moe").iterdir()) == ["moe_model.bin", "pesc_config.json"]
    state = torch.load(tmp_path / "moe" / "moe_model.bin", weights_only=True)
    expected = {f"base_model.model.{k}": v for k, v in official.tensors.items() if ".moe_adapter." in k}
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    dense = BASES["mistral"][1](model.config.__class__(**SIZES, tie_word_embeddings=False)).eval()
    dense.load_state_dict(official.dense)
    assert torch.equal(logits(load_pesc(dense, tmp_path / "moe")), logits(model))


# ---------------------------------------------------------------------------- load_pesc(moe_model.bin)
def dense_model(official, flavor="camelidae", **sizes):
    config_cls, model_cls = BASES[BASE_OF[flavor]]
    model = model_cls(config_cls(**{**SIZES, **sizes}, tie_word_embeddings=False)).eval()
    if not sizes:
        model.load_state_dict(official.dense)
    return model


@pytest.mark.parametrize("naming,prefix,as_directory", [("dict", "base_model.model.", False), ("list", "", True)])
def test_load_pesc_reads_moe_model_bin(tmp_path, naming, prefix, as_directory):
    official = write_official(tmp_path / "src", flavor="camelidae", seed=2)
    path = tmp_path / "train_out" / "moe_model.bin"
    path.parent.mkdir()
    write_moe_model_bin(path, official.adapters, naming=naming, prefix=prefix)
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, scaling=0.5)
    model = load_pesc(dense_model(official), path.parent if as_directory else path, config=config)
    assert torch.equal(logits(model), logits(crafted_directly(official, config, "camelidae")))
    assert not model.training and PESCConfig.from_dict(model.config.pesc) == config


def test_load_pesc_takes_the_config_from_an_official_config_json_beside_the_file(tmp_path):
    official = write_official(tmp_path / "src", flavor="camelidae", seed=2)
    write_moe_model_bin(official.directory / "moe_model.bin", official.adapters)
    model = load_pesc(dense_model(official), official.directory / "moe_model.bin")
    assert torch.equal(logits(model), logits(from_pretrained(official.directory)))


def test_load_pesc_moe_model_bin_errors_before_any_change(tmp_path):
    official = write_official(tmp_path / "src", flavor="camelidae")
    good = tmp_path / "good.bin"
    state = write_moe_model_bin(good, official.adapters)
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, scaling=0.5)

    def variant(name, edit):
        path = tmp_path / name
        torch.save(edit(dict(state)), path)
        return path

    def without_layer(s, layer=2):
        return {k: v for k, v in s.items() if f"layers.{layer}." not in k}

    prefix = "base_model.model."
    cases = [
        (good, dict(config=PESCConfig(num_experts=8, top_k=2, adapter_dim=8)), {},
         r"layer model.layers.0.mlp has 4 experts \(num_experts\) in the checkpoint but the model needs 8"),
        (good, dict(config=PESCConfig(num_experts=4, top_k=2, adapter_dim=16)), {},
         r"has 8 adapter rank \(adapter_dim\) in the checkpoint but the model needs 16"),
        (good, dict(config=config), dict(hidden_size=64, num_attention_heads=4),
         r"has 48 hidden size in the checkpoint but the model needs 64"),
        (good, dict(config=config), dict(num_hidden_layers=4),
         r"adapters for 3 layers but the model has 4 FFNs to craft: missing \['model.layers.3.mlp'\]"),
        (variant("missing_layer.bin", without_layer), dict(config=config), {},
         r"missing \['model.layers.2.mlp'\]"),
        (variant("missing_up.bin", lambda s: {k: v for k, v in s.items()
                                              if k != prefix + expert_key(1, 3, "up", "dict")}),
         dict(config=config), {}, r"layer model.layers.1.mlp has a router for 4 experts but its adapters do not "
                                  r"match: missing \['up of expert 3'\]"),
        (variant("no_router.bin", lambda s: {k: v for k, v in s.items() if k != prefix + router_key(0)}),
         dict(config=config), {}, r"layer model.layers.0.mlp has experts but no router"),
        (variant("bad_shape.bin", lambda s: {**s, prefix + expert_key(0, 1, "down", "dict"): torch.ones(8, 47)}),
         dict(config=config), {}, r"adapter_down.weight has shape \[8, 47\]; expected \[8, 48\]"),
        (variant("foreign.bin", lambda s: {**s, "base_model.model.lm_head.weight": torch.ones(2, 2)}),
         dict(config=config), {}, r"holds tensors that are not PESC routers or adapters: \['lm_head.weight'\]"),
        (good, {}, {}, r"stores no top_k or scaling: pass config="),
    ]
    for path, kwargs, sizes, message in cases:
        base = dense_model(official, **sizes)
        with pytest.raises(ValueError, match=message):
            load_pesc(base, path, **kwargs)
        assert not pesc_layers(base), f"{message}: a failed load must not modify the model"
    crafted = craft(dense_model(official), PESCConfig(num_experts=4, top_k=1, adapter_dim=8))
    with pytest.raises(ValueError, match="already crafted with"):
        load_pesc(crafted, good, config=config)


# ------------------------------------------------------------------------------ from_pretrained errors
def _rewrite_tensors(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    save_file(edit(load_file(path)), str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("config,message", [
    ({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
    ({"model_type": "llama", "num_experts": None, "topk": None, "adapter_dim": None, "moe_scaling": None},
     "this is a dense model, not a PESC checkpoint"),
    ({"topk": None}, "model_type 'camelidae' needs the field 'topk'"),
    ({"topk": 9}, r"field 'topk' must be in \[1, 4\]; got 9"),
    ({"adapter_dim": "eight"}, "field 'adapter_dim' must be an integer; got 'eight'"),
    ({"moe_scaling": float("nan")}, "field 'moe_scaling' must be a finite number"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "field 'rope_scaling' must be"),
    ({"adapter_dim": 16}, r"has 8 adapter rank \(adapter_dim\) in the checkpoint but the model needs 16"),
    ({"num_experts": 5}, r"has 4 experts \(num_experts\) in the checkpoint but the model needs 5"),
], ids=["model_type", "dense", "missing-topk", "topk", "adapter_dim-type", "scaling", "rope_scaling", "rank",
        "experts"])
def test_from_pretrained_config_errors_name_the_field(tmp_path, config, message):
    official = write_official(tmp_path / "ckpt", flavor="camelidae", config=config)
    with pytest.raises(ValueError, match=message):
        from_pretrained(official.directory)


def test_from_pretrained_checkpoint_errors(tmp_path):
    official = write_official(tmp_path / "missing_layer", drop=tuple(
        [router_key(2)] + [expert_key(2, e, p, "dict") for e in range(4) for p in ("down", "up")]))
    with pytest.raises(ValueError, match=r"missing \['model.layers.2.mlp'\]"):
        from_pretrained(official.directory)
    official = write_official(tmp_path / "hidden")
    _rewrite_tensors(official.directory, lambda t: {
        k: (torch.ones(v.shape[0], 40) if k.endswith("router.weight") else
            torch.ones(8, 40) if "adapter_down" in k else torch.ones(40, 8) if "adapter_up" in k else v)
        for k, v in t.items()})
    with pytest.raises(ValueError, match="has 40 hidden size in the checkpoint but the model needs 48"):
        from_pretrained(official.directory)
    official = write_official(tmp_path / "ffn", drop=("model.layers.0.mlp.gate_proj.weight",))
    with pytest.raises(RuntimeError, match=r"lacks base-model tensors.*model.layers.0.mlp.gate_proj.weight"):
        from_pretrained(official.directory)
    with pytest.raises(TypeError, match="trust_remote_code=True is not needed"):
        from_pretrained(official.directory, trust_remote_code=True)
    with pytest.raises(TypeError, match="config= is set by pesc_kernels"):
        from_pretrained(official.directory, config=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(official.config))
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        from_pretrained(tmp_path / "empty")


# ------------------------------------------------------------------------------ save_official errors
def crafted_llama(**config):
    torch.manual_seed(0)
    config_cls, model_cls = BASES["llama"]
    return model_cls(config_cls(**{**SIZES, "tie_word_embeddings": False, **config})).eval()


def test_save_official_refuses_what_the_official_code_would_compute_differently(tmp_path):
    good = PESCConfig.camelidae(num_experts=4, adapter_dim=8)
    cases = [
        (crafted_llama(), None, "camelidae", "has no PESC layers; craft it first"),
        (crafted_llama(), good, "sparsetral", "flavor 'sparsetral' is the official mistral-based code"),
        (crafted_llama(rope_theta=1e6), good, "camelidae",
         "rope_theta is 1e[+]06 but the official camelidae code always uses a RoPE base of 10000"),
        (crafted_llama(), PESCConfig.camelidae(num_experts=4, adapter_dim=8, activation="silu"), "camelidae",
         "uses exact GELU adapters"),
        (crafted_llama(), PESCConfig.camelidae(num_experts=4, adapter_dim=8, normalize_top_k=False), "camelidae",
         "always renormalises the top-k routing weights"),
        (crafted_llama(attention_bias=True), good, "camelidae", "attention_bias=True, but the official Camelidae"),
        (crafted_llama(), good, "mixtral", "unknown official flavor 'mixtral'"),
    ]
    for number, (model, pesc, flavor, message) in enumerate(cases):
        if pesc is not None:
            craft(model, pesc)
        with pytest.raises(ValueError, match=message):
            save_official(model, tmp_path / f"out{number}", flavor)
        assert not (tmp_path / f"out{number}").exists()
    from peft import LoraConfig, get_peft_model

    lora = craft(get_peft_model(crafted_llama(), LoraConfig(r=2, target_modules=["q_proj"])), good)
    with pytest.raises(ValueError, match="carries unmerged peft adapters"):
        save_official(lora, tmp_path / "lora", "camelidae")
    save_official(lora, tmp_path / "lora_adapters", "camelidae", adapters_only=True)  # adapters alone are fine
    assert (tmp_path / "lora_adapters" / "moe_model.bin").is_file()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        save_official(craft(crafted_llama(), good), tmp_path / "taken", "camelidae")
    with pytest.warns(UserWarning, match="trains with adapter dropout 0.1 whatever the config says"):
        save_official(craft(crafted_llama(), PESCConfig(num_experts=4, adapter_dim=8)), tmp_path / "d0", "camelidae")


# ------------------------------------------------------------------------------------------- convert
def test_convert_command_line(tmp_path, capsys):
    official = write_official(tmp_path / "src", flavor="camelidae", shards=2)
    (official.directory / "tokenizer_config.json").write_text("{}")
    (official.directory / "modeling_camelidae.py").write_text("# their remote code\n")
    assert cli(["convert", str(official.directory), str(tmp_path / "dst"), "--to", "pesc", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "dst").iterdir())
    assert "tokenizer_config.json" in files and "modeling_camelidae.py" not in files
    assert "pesc" in json.loads((tmp_path / "dst" / "config.json").read_text())
    assert torch.equal(logits(from_pretrained(tmp_path / "dst")), logits(from_pretrained(official.directory)))
    assert cli(["convert", str(official.directory), str(tmp_path / "dst"), "--to", "sparsetral", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["convert", str(official.directory), str(tmp_path / "x"), "--to", "sparsetral", "--no-progress"]) == 2
    assert "flavor 'sparsetral' is the official mistral-based code" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["convert", str(official.directory), str(tmp_path / "y"), "--to", "gguf"])


def test_convert_progress_bar(tmp_path, capsys):
    official = write_official(tmp_path / "src", flavor="qwen2idae", shards=2)
    convert(official.directory, tmp_path / "dst", "pesc")
    assert "model-00002-of-00002.safetensors" in capsys.readouterr().err  # tqdm's description names the shard


def test_convert_failure_leaves_no_output(tmp_path, monkeypatch):
    from pesc_kernels.checkpoints import weight_files as _weight_files

    official = write_official(tmp_path / "src", flavor="camelidae", shards=3)
    real_write, calls = _weight_files.SafetensorsWriter.write, []

    def failing_write(self, name, tensor):
        calls.append(name)
        if len(calls) == 20:
            raise OSError("disk full")
        real_write(self, name, tensor)

    monkeypatch.setattr(_weight_files.SafetensorsWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert(official.directory, tmp_path / "dst", "pesc", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither dst nor a partial directory


# ------------------------------------------------------------------------------ optional dependencies
def test_core_package_imports_without_transformers_peft_or_bitsandbytes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "camelidae"}))
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("transformers", "peft", "bitsandbytes"):
                    raise ImportError(f"blocked {{name}}")
        sys.meta_path.insert(0, Block())
        import torch, pesc_kernels
        config = pesc_kernels.PESCConfig(num_experts=2, top_k=1, adapter_dim=4)
        layer = pesc_kernels.PESCMoE(torch.nn.Linear(8, 8), 8, config)
        assert layer(torch.randn(3, 8)).shape == (3, 8)
        try:
            pesc_kernels.from_pretrained({str(tmp_path)!r})
        except ImportError as error:
            print(error)
        from pesc_kernels.__main__ import main
        print("cli", main(["convert", {str(tmp_path)!r}, {str(tmp_path / 'out')!r}, "--to", "pesc"]))
        print("transformers" in sys.modules, "bitsandbytes" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(pesc_kernels.__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == ("loading a PESC checkpoint needs the transformers package, which is not installed: "
                        "pip install pesc_kernels[hf]")
    assert lines[1:] == ["cli 2", "False False"]
    assert "pip install pesc_kernels[hf]" in result.stderr


# -------------------------------------------------------------------------------------- README
def test_readme_official_checkpoint_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    blocks = re.findall(re.escape(README_MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "expected one README example for official checkpoints"
    section = text.index("## Running official Camelidae and Sparsetral checkpoints")
    assert section < text.index(README_MARKER) < text.index("## Benchmarks")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_official"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert type(namespace["camelidae"]) is LlamaForCausalLM and pesc_layers(namespace["camelidae"])
    assert (tmp_path / "tiny-camelidae-converted" / "config.json").is_file()
