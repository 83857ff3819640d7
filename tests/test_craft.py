"""craft() on tiny random-init Llama / Mistral / Qwen2 models (built from configs, no hub access),
the training losses, peft LoRA, the Hugging Face Trainer and accelerate, and adapter-only
checkpoints (save_pesc / load_pesc).
"""
import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import pesc_kernels
from pesc_kernels import PESCConfig, PESCMoE, craft, load_pesc, reference, router_losses, save_pesc
from pesc_kernels.crafting import pesc_layers

ARCHS = {"llama": (LlamaForCausalLM, LlamaConfig), "mistral": (MistralForCausalLM, MistralConfig),
         "qwen2": (Qwen2ForCausalLM, Qwen2Config)}
VOCAB, LAYERS, HIDDEN = 97, 2, 48
SMALL = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)


def tiny_model(arch="llama", seed=0, **overrides):
    torch.manual_seed(seed)
    model_cls, config_cls = ARCHS[arch]
    config = config_cls(**{**dict(hidden_size=HIDDEN, intermediate_size=100, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                  max_position_embeddings=64), **overrides})
    return model_cls(config).eval()


def batch(seed=0, batch_size=2, length=12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch_size, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in the second row
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def randomize_adapters(model, seed=1):
    """Non-zero adapters (w_up is zero at init) so that checkpoints and losses are non-trivial."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in pesc_kernels.pesc_parameters(model):
            p.normal_(0, 0.2)
    return model


def lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def reference_router_losses(model, attention_mask):
    mask = attention_mask.reshape(-1).bool() if attention_mask is not None else None
    aux = z = 0.0
    for _, layer in pesc_layers(model):
        aux = aux + reference.load_balancing_loss(layer.router_logits, layer.expert_indices, mask)
        z = z + reference.router_z_loss(layer.router_logits, mask)
    return aux, z


def pesc_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -------------------------------------------------------------------------------------- crafting
@pytest.mark.parametrize("arch", ARCHS)
def test_crafted_model_equals_dense_at_init(arch):
    model = tiny_model(arch)
    inputs = batch()
    dense = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert craft(model, PESCConfig.camelidae(adapter_dim=16)) is model
    crafted = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert torch.equal(crafted, dense)
    layers = pesc_layers(model)
    assert [name for name, _ in layers] == [f"model.layers.{i}.mlp" for i in range(LAYERS)]
    assert all(isinstance(layer, PESCMoE) for _, layer in layers)
    expected = {f"model.layers.{i}.mlp.{p}" for i in range(LAYERS) for p in ("router.weight", "w_down", "w_up")}
    assert pesc_names(model) == expected
    assert model.config.pesc == PESCConfig.camelidae(adapter_dim=16).to_dict()


def test_craft_keeps_the_mode_of_the_wrapped_ffn():
    """New modules start in training mode; crafted layers take the FFN's, so an eval model gets no dropout."""
    model = tiny_model().eval()
    craft(model, PESCConfig(num_experts=4, top_k=2, adapter_dim=8, adapter_dropout=0.5))
    layers = [m for m in model.modules() if isinstance(m, PESCMoE)]
    assert layers and not any(layer.training for layer in layers)
    assert all(layer.training for layer in craft(tiny_model().train(), SMALL).modules() if isinstance(layer, PESCMoE))


def test_trainable_parameter_summary():
    model = craft(tiny_model(), SMALL)
    summary = pesc_kernels.trainable_parameter_summary(model)
    router, adapters = SMALL.num_experts * HIDDEN, SMALL.num_experts * 2 * HIDDEN * SMALL.adapter_dim
    dense_total = sum(p.numel() for p in tiny_model().parameters())
    assert summary["total"] == dense_total + LAYERS * (router + adapters)
    assert summary["trainable"] == LAYERS * (router + adapters)
    idle = (SMALL.num_experts - SMALL.top_k) * 2 * HIDDEN * SMALL.adapter_dim
    assert summary["activated_per_token"] == summary["total"] - LAYERS * idle
    with torch.device("meta"):  # counting without allocating: crafting works on the meta device
        meta = LlamaForCausalLM(tiny_model().config)
    assert pesc_kernels.trainable_parameter_summary(craft(meta, SMALL)) == summary


def test_config_round_trips_through_model_config(tmp_path):
    config = PESCConfig.sparsetral(adapter_dim=8, z_loss_coef=1e-3)
    model = craft(tiny_model("qwen2"), config)
    model.config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert PESCConfig.from_dict(loaded.pesc) == config
    fresh = Qwen2ForCausalLM(loaded)
    craft(fresh)  # no config given: the one stored in model.config is used
    assert pesc_layers(fresh)[0][1].config == config


class _Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.feed_forward = torch.nn.Sequential(torch.nn.Linear(d, 3 * d), torch.nn.GELU(), torch.nn.Linear(3 * d, d))
        self.mlp = torch.nn.Linear(d, 2 * d)  # an "mlp" that does not map hidden -> hidden: not a target here

    def forward(self, x):
        return x + self.feed_forward(x)


class _Toy(torch.nn.Module):
    """Not a transformers model: blocks with a `feed_forward` FFN and a config with hidden_size."""

    def __init__(self, d=16):
        super().__init__()
        self.config = type("Config", (), {"hidden_size": d})()
        self.blocks = torch.nn.ModuleList(_Block(d) for _ in range(3))

    def forward(self, x, labels=None):
        for block in self.blocks:
            x = block(x)
        return {"loss": (x - labels).square().mean()} if labels is not None else {"hidden": x}


def test_target_modules_extend_craft_to_other_models():
    model = _Toy()
    craft(model, PESCConfig(num_experts=3, top_k=1, adapter_dim=4, target_modules=["feed_forward"]))
    assert [n for n, _ in pesc_layers(model)] == [f"blocks.{i}.feed_forward" for i in range(3)]
    assert all(not p.requires_grad for block in model.blocks for p in block.mlp.parameters())
    x = torch.randn(5, 16)
    out = model.train()(x, labels=torch.zeros(5, 16))
    aux, z = reference_router_losses(model, None)
    assert torch.allclose(out["aux_loss"], aux.float()) and torch.allclose(out["z_loss"], z.float())


def test_craft_errors():
    model = craft(tiny_model(), SMALL)
    with pytest.raises(ValueError, match="already crafted"):
        craft(model, SMALL)
    with pytest.raises(ValueError, match=r"no module of LlamaForCausalLM matches target_modules=\['ffn'\]"):
        craft(tiny_model(), PESCConfig(target_modules=["ffn"]))
    with pytest.raises(TypeError, match="config must be a PESCConfig"):
        craft(tiny_model(), {"num_experts": 8})
    with pytest.raises(ValueError, match="has no PESC layers"):
        router_losses(tiny_model())
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        router_losses(craft(tiny_model(), SMALL))


# ----------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("arch", ARCHS)
def test_loss_adds_masked_router_losses(arch):
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.1, z_loss_coef=0.01)
    model = randomize_adapters(craft(tiny_model(arch), config))
    inputs = batch()
    out = model(**inputs)
    aux, z = reference_router_losses(model, inputs["attention_mask"])
    torch.testing.assert_close(out.aux_loss, aux.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.z_loss, z.float(), rtol=1e-5, atol=1e-6)
    unmasked_aux, _ = reference_router_losses(model, None)
    assert abs(unmasked_aux - aux) > 1e-4  # the padding really is excluded
    expected = lm_loss(out.logits, inputs["labels"]) + 0.1 * aux + 0.01 * z
    torch.testing.assert_close(out.loss, expected.float(), rtol=1e-5, atol=1e-6)
    losses = router_losses(model)
    assert torch.equal(losses["aux_loss"], out.aux_loss) and torch.equal(losses["z_loss"], out.z_loss)
    # Tuple outputs carry the same total loss.
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss)
    # Without labels in eval mode nothing is added (and nothing computed).
    plain = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert plain.loss is None and "aux_loss" not in plain


def test_router_losses_follow_the_num_items_in_batch_share():
    model = randomize_adapters(craft(tiny_model(), PESCConfig(num_experts=4, top_k=2, adapter_dim=8,
                                                              aux_loss_coef=0.5)))
    inputs = batch()
    targets = int((inputs["labels"][:, 1:] != -100).sum())
    out = model(**inputs, num_items_in_batch=torch.tensor(4 * targets))  # 1 of 4 equal micro-batches
    lm = (lm_loss(out.logits, inputs["labels"]) / 4).float()
    torch.testing.assert_close(out.loss, lm + 0.5 * out.aux_loss / 4, rtol=1e-5, atol=1e-6)


def test_training_reduces_loss_and_moves_balancing_loss():
    model = craft(tiny_model(), PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.1)).train()
    inputs = batch()
    out = model(**inputs)
    out.loss.backward()
    # At init w_up = 0, so the LM loss gives the routers no gradient: theirs comes from the balancing loss.
    router_grads = [layer.router.weight.grad for _, layer in pesc_layers(model)]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)
    optimizer = torch.optim.AdamW(pesc_kernels.pesc_parameters(model), lr=3e-2)
    optimizer.step()
    optimizer.zero_grad()
    first_loss, first_aux = out.loss.item(), out.aux_loss.item()
    for _ in range(10):
        out = model(**inputs)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert out.loss.item() < first_loss - 0.05
    assert abs(out.aux_loss.item() - first_aux) > 1e-3


def test_gradient_checkpointing_keeps_router_gradients():
    model = craft(tiny_model(), SMALL).train()
    model.gradient_checkpointing_enable()
    model(**batch()).loss.backward()
    assert all(layer.router.weight.grad.abs().sum() > 0 for _, layer in pesc_layers(model))


def test_router_losses_reuse_the_layers_balancing_loss_and_checkpointing_keeps_it_exact():
    """In training each layer computes its balancing loss with the routing, from the padding mask of
    the step; activation checkpointing recomputes the layers with the same mask, so the gradients
    are those of the run without checkpointing."""
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.5)
    runs = []
    for checkpointing in (False, True):
        model = randomize_adapters(craft(tiny_model(), config)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inputs = batch()
        out = model(**inputs)
        layers = [layer for _, layer in pesc_layers(model)]
        assert all(layer.balancing_loss is not None for layer in layers)
        recomputed = sum(pesc_kernels.ops.load_balancing_loss(layer.router_logits, layer.expert_indices,
                                                              layer.token_mask) for layer in layers)
        assert torch.equal(out.aux_loss, recomputed)
        aux, _ = reference_router_losses(model, inputs["attention_mask"])
        torch.testing.assert_close(out.aux_loss, aux.float(), rtol=1e-5, atol=1e-6)
        out.loss.backward()
        runs.append((out.loss.detach(), [layer.router.weight.grad for layer in layers]))
    (loss, grads), (loss_ckpt, grads_ckpt) = runs
    torch.testing.assert_close(loss, loss_ckpt)
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_reentrant_checkpointing_warns_that_routers_get_no_loss_gradient():
    model = craft(tiny_model(), SMALL).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.warns(RuntimeWarning, match="router logits carry no gradient"):
        model(**batch())


def test_generate_with_kv_cache():
    model = randomize_adapters(craft(tiny_model(), SMALL))
    inputs = batch()
    generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 15)
    layer = pesc_layers(model)[0][1]
    assert layer.router_logits.shape[0] == 2  # the last step ran one new token per row


# ------------------------------------------------------------------------------------------- peft
def lora(model):
    # CI installs peft and accelerate (requirements-dev.txt); the offline GPU machine may lack them.
    peft = pytest.importorskip("peft", reason="peft is not installed")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def test_peft_lora_on_attention_with_craft():
    peft_model = craft(lora(tiny_model()), SMALL)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    lora_names = {n for n in trainable if ".lora_" in n}
    assert len(lora_names) == LAYERS * 2 * 2  # A and B of q_proj and v_proj
    assert trainable - lora_names == {f"base_model.model.model.layers.{i}.mlp.{p}" for i in range(LAYERS)
                                      for p in ("router.weight", "w_down", "w_up")}
    peft_model.train()
    inputs = batch()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(8):
        out = peft_model(**inputs)
        assert out.aux_loss is not None
        out.loss.backward()
        if step == 1:
            grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
            assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_peft_after_craft_warns_that_pesc_is_frozen():
    peft_model = lora(craft(tiny_model(), SMALL)).train()
    with pytest.warns(RuntimeWarning, match="routers and adapters are all frozen"):
        peft_model(**batch())
    unfrozen = lora(craft(tiny_model(), SMALL)).train()
    for p in pesc_kernels.pesc_parameters(unfrozen):
        p.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", message="pesc_kernels: .*falling back")
        unfrozen(**batch()).loss.backward()
    assert all(p.grad is not None for p in pesc_kernels.pesc_parameters(unfrozen))


# -------------------------------------------------------------------------- Trainer / accelerate
@pytest.fixture
def fresh_accelerate_state():
    pytest.importorskip("accelerate", reason="accelerate is not installed")
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def test_hf_trainer_trains_with_the_router_losses(tmp_path, fresh_accelerate_state):
    from transformers import Trainer, TrainingArguments

    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.1)
    model = randomize_adapters(craft(tiny_model(), config))
    rows = [{k: v[i] for k, v in batch(seed=s).items()} for s in range(4) for i in range(2)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=1e-2, use_cpu=True, report_to=[],
                             save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    inputs = batch()
    model.train()
    loss = trainer.compute_loss(model, dict(inputs))
    aux, _ = reference_router_losses(model, inputs["attention_mask"])
    torch.testing.assert_close(loss, (lm_loss(model(**inputs).logits, inputs["labels"]) + 0.1 * aux).float(),
                               rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in pesc_kernels.pesc_parameters(model)]
    trainer.train()
    assert all(not torch.equal(b, p) for b, p in zip(before, pesc_kernels.pesc_parameters(model)))


def test_accelerate_mixed_precision_keeps_the_router_losses(fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = randomize_adapters(craft(tiny_model(), PESCConfig(num_experts=4, top_k=2, adapter_dim=8)))
    optimizer = torch.optim.AdamW(pesc_kernels.pesc_parameters(model), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    inputs = batch()
    out = model(**inputs)
    assert out.aux_loss is not None and out.logits.dtype == torch.float32
    aux, _ = reference_router_losses(model, inputs["attention_mask"])
    torch.testing.assert_close(out.aux_loss, aux.float(), rtol=1e-5, atol=1e-6)
    accelerator.backward(out.loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in pesc_kernels.pesc_parameters(model))
    optimizer.step()


# ------------------------------------------------------------------------------------ checkpoints
def trained_model(arch="llama"):
    model = craft(tiny_model(arch), SMALL)
    return randomize_adapters(model).eval()


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = trained_model()
    save_pesc(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pesc_adapters.safetensors", "pesc_config.json"]
    assert PESCConfig.from_json_file(tmp_path / "pesc_config.json") == SMALL
    saved = load_file(tmp_path / "pesc_adapters.safetensors")
    trainable = pesc_kernels.trainable_parameter_summary(model)["trainable"]
    assert len(saved) == 3 * LAYERS and sum(t.numel() for t in saved.values()) == trainable
    inputs = batch()
    expected = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    loaded = load_pesc(tiny_model(), tmp_path)
    got = loaded(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert torch.equal(got, expected)
    assert loaded.config.pesc == SMALL.to_dict()
    load_pesc(loaded, tmp_path)  # an already crafted model with the same config loads in place


def test_save_load_with_peft(tmp_path):
    model = randomize_adapters(craft(lora(tiny_model()), SMALL))
    save_pesc(model, tmp_path)
    loaded = load_pesc(lora(tiny_model()), tmp_path)
    for a, b in zip(pesc_kernels.pesc_parameters(model), pesc_kernels.pesc_parameters(loaded)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_load_onto_another_dtype_and_device(tmp_path, dtype, device):
    model = trained_model()
    save_pesc(model, tmp_path)
    loaded = load_pesc(tiny_model().to(device=device, dtype=dtype), tmp_path)
    for a, b in zip(pesc_kernels.pesc_parameters(model), pesc_kernels.pesc_parameters(loaded)):
        assert b.dtype == dtype and b.device.type == device.type
        assert torch.equal(b.cpu(), a.to(dtype))
    inputs = batch()
    logits = loaded(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)).logits
    expected = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert (logits.float().cpu() - expected).abs().max() < 0.1 * expected.abs().max()


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = trained_model()
    good = tmp_path / "good"
    save_pesc(model, good)

    def variant(name, edit_config=None, edit_tensors=None, metadata=None):
        path = tmp_path / name
        path.mkdir()
        config = json.loads((good / "pesc_config.json").read_text())
        (path / "pesc_config.json").write_text(json.dumps(edit_config(config) if edit_config else config))
        tensors = load_file(good / "pesc_adapters.safetensors")
        from safetensors import safe_open

        with safe_open(str(good / "pesc_adapters.safetensors"), framework="pt") as f:
            meta = f.metadata()
        save_file(edit_tensors(tensors) if edit_tensors else tensors, str(path / "pesc_adapters.safetensors"),
                  metadata=metadata(meta) if metadata else meta)
        return path

    cases = [
        (tmp_path / "missing", FileNotFoundError, "pesc_config.json not found"),
        (variant("rank", edit_config=lambda c: {**c, "adapter_dim": 16}), ValueError,
         r"model.layers.0.mlp.w_down has shape \[4, 48, 8\] in the checkpoint but the model needs \[4, 48, 16\]"),
        (variant("topk", edit_config=lambda c: {**c, "top_k": 9}), ValueError, r"top_k \(9\) must be <= num_experts"),
        (variant("layers", edit_tensors=lambda t: {k: v for k, v in t.items() if ".1." not in k}), ValueError,
         r"missing \['model.layers.1.mlp.router.weight'"),
        (variant("format", metadata=lambda m: {**m, "format": "other"}), ValueError,
         "is not a pesc_kernels adapter checkpoint"),
        (variant("targets", edit_config=lambda c: {**c, "target_modules": ["self_attn"]}), ValueError,
         "do not match the model's FFNs"),
    ]
    for path, error, message in cases:
        base = tiny_model()
        with pytest.raises(error, match=message):
            load_pesc(base, path)
        assert not pesc_layers(base), f"{path.name}: a failed load must not modify the model"
    with pytest.raises(ValueError,
                       match=r"saved from a model with hidden_size=48 \(llama\); this model has hidden_size=64"):
        load_pesc(tiny_model(hidden_size=64), good)
    with pytest.raises(ValueError, match="already crafted with"):
        load_pesc(craft(tiny_model(), PESCConfig(num_experts=4, top_k=1, adapter_dim=8)), good)
    with pytest.raises(ValueError, match="has no PESC layers"):
        save_pesc(tiny_model(), tmp_path / "uncrafted")


def test_crafted_models_deep_copy_and_save_pretrained(tmp_path):
    model = trained_model()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in pesc_kernels.pesc_parameters(clone):
            p.zero_()
    inputs = batch()
    out = clone.train()(**inputs)  # the copy's forward wrapper drives the copy's layers, not the original's
    assert out.aux_loss is not None and pesc_layers(model)[0][1].router_logits is None
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pesc"] == SMALL.to_dict()
