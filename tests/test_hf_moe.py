"""pesc as a Hugging Face transformers MoE backend, on tiny random models of six families.

For Mixtral, Qwen2-MoE (shared expert), Qwen3-MoE (norm_topk_prob both ways), OLMoE, GPT-OSS
(interleaved clamped SwiGLU, non-zero expert and router biases) and DeepSeek-V3 (sigmoid routing,
selection bias, groups, scaling, shared expert), in training mode with padding and labels and the
auxiliary loss on where the model has one: logits, loss, aux loss and every parameter gradient of
transformers' eager implementation equal those of the "pesc" experts backend and of patch_moe
(experts + routers) within fp32 tolerance, with the same routing decisions. Also: a negative
control (a flipped norm_topk_prob is detected), from_pretrained(..., experts_implementation="pesc"),
generate(), bf16 error against fp32 (per experts module) no worse than transformers' own, the balancing loss,
expert-parallel sentinel ids, refusals, and the import without transformers.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import pesc_kernels  # noqa: E402
from pesc_kernels import ops  # noqa: E402
from pesc_kernels.integrations import transformers as pesc_hf  # noqa: E402

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              initializer_range=0.1, max_position_embeddings=64)


def _mixtral():
    return transformers.MixtralConfig(**COMMON, intermediate_size=40, num_local_experts=6, num_experts_per_tok=2,
                                      output_router_logits=True, router_aux_loss_coef=0.05)


def _qwen2_moe():
    return transformers.Qwen2MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=20,
                                       shared_expert_intermediate_size=36, num_experts=6, num_experts_per_tok=2,
                                       norm_topk_prob=False, output_router_logits=True, router_aux_loss_coef=0.05)


def _qwen3_moe(norm_topk_prob):
    return lambda: transformers.Qwen3MoeConfig(**COMMON, head_dim=8, intermediate_size=48, moe_intermediate_size=20,
                                               num_experts=8, num_experts_per_tok=3, norm_topk_prob=norm_topk_prob,
                                               output_router_logits=True, router_aux_loss_coef=0.05)


def _olmoe():
    return transformers.OlmoeConfig(**COMMON, intermediate_size=24, num_experts=8, num_experts_per_tok=2,
                                    output_router_logits=True, router_aux_loss_coef=0.05)


def _gpt_oss():
    return transformers.GptOssConfig(**COMMON, head_dim=8, intermediate_size=24, num_local_experts=4,
                                     num_experts_per_tok=2, sliding_window=8, output_router_logits=True,
                                     router_aux_loss_coef=0.05)


def _deepseek_v3():
    common = {**COMMON, "num_key_value_heads": 4}
    return transformers.DeepseekV3Config(**common, intermediate_size=48, moe_intermediate_size=16,
                                         n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4,
                                         topk_group=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None,
                                         qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                                         routed_scaling_factor=2.5, norm_topk_prob=True)


FAMILIES = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe_norm": _qwen3_moe(True),
    "qwen3_moe_no_norm": _qwen3_moe(False),
    "olmoe": _olmoe,
    "gpt_oss": _gpt_oss,
    "deepseek_v3": _deepseek_v3,
}


def make_model(family, seed=0):
    """A tiny random causal LM of the family, on the eager experts, with every bias and the
    DeepSeek-V3 selection bias made non-zero so that each term is exercised."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family](), experts_implementation="eager")
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("bias") or "e_score_correction_bias" in name:
                tensor.normal_(0.0, 0.2)
    return model.train()


def batch(seed=1, padded=True):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def record_routing(model):
    """Hooks that collect every router's (weights, indices) of each forward, in call order."""
    routed = []
    for module in model.modules():
        if type(module).__name__.endswith(("TopKRouter", "TopkRouter")):
            module.register_forward_hook(lambda _m, _i, out: routed.append((out[1].detach(), out[2].detach())))
    return routed


def train_step(model):
    ids, mask, labels = batch()
    routed = record_routing(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, routed


def assert_same_training_step(got, expected, name):
    (out, grads, routed), (out_ref, grads_ref, routed_ref) = got, expected
    torch.testing.assert_close(out.logits, out_ref.logits, rtol=1e-5, atol=1e-5, msg=f"{name}: logits")
    torch.testing.assert_close(out.loss, out_ref.loss, rtol=1e-5, atol=1e-6, msg=f"{name}: loss")
    if out_ref.aux_loss is not None:
        torch.testing.assert_close(out.aux_loss, out_ref.aux_loss, rtol=1e-5, atol=1e-6, msg=f"{name}: aux loss")
    assert grads.keys() == grads_ref.keys(), name
    for param, g_ref in grads_ref.items():
        torch.testing.assert_close(grads[param], g_ref, rtol=1e-4, atol=1e-6 * max(1.0, g_ref.abs().max().item()),
                                   msg=f"{name}: gradient of {param}")
    assert len(routed) == len(routed_ref) > 0, name
    for (w, idx), (w_ref, idx_ref) in zip(routed, routed_ref):
        # The same experts for every token (transformers' DeepSeek-V3 router leaves their order unspecified).
        assert torch.equal(idx.sort(dim=-1).values, idx_ref.sort(dim=-1).values), f"{name}: routing differs"
        assert w.dtype == w_ref.dtype and idx.dtype == idx_ref.dtype, name
        order, order_ref = idx.argsort(dim=-1), idx_ref.argsort(dim=-1)
        torch.testing.assert_close(w.gather(1, order), w_ref.gather(1, order_ref), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_equals_eager(family):
    eager = make_model(family)
    backend = copy.deepcopy(eager)
    backend.set_experts_implementation("pesc")
    patched = copy.deepcopy(eager)
    report = pesc_hf.patch_moe(patched)
    assert patched.config._experts_implementation == "pesc"
    assert sum(v.startswith("router: ") for v in report.values()) == sum(v == "experts: pesc" for v in report.values())
    expected = train_step(eager)
    assert_same_training_step(train_step(backend), expected, f"{family} pesc experts")
    assert_same_training_step(train_step(patched), expected, f"{family} patch_moe")


def test_negative_control_norm_topk_prob_is_detected():
    """The comparison above is sharp enough to see a router that ignores norm_topk_prob."""
    eager = make_model("qwen3_moe_no_norm")
    flipped = copy.deepcopy(eager)
    for module in flipped.modules():
        if hasattr(module, "norm_topk_prob"):
            module.norm_topk_prob = True
    pesc_hf.patch_moe(flipped)
    with pytest.raises(AssertionError):
        assert_same_training_step(train_step(flipped), train_step(eager), "flipped norm_topk_prob")


def test_from_pretrained_and_generate(tmp_path):
    make_model("mixtral").save_pretrained(tmp_path / "tiny-mixtral")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-mixtral", experts_implementation="pesc")
    assert model.config._experts_implementation == "pesc"
    eager = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-mixtral",
                                                              experts_implementation="eager")
    ids, mask, _ = batch(padded=False)
    model.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, eager(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, ids.shape[1] + 4)
    assert torch.equal(generated, eager.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_error_no_worse_than_transformers(family):
    """In bf16, the pesc experts backend is at least as accurate against fp32 as transformers' own.

    Measured per experts module, on the inputs the fp32 model gives it (hidden states cast to bf16,
    the same expert ids and routing weights): a whole-model comparison would mostly measure which
    near-tied routing decisions bf16 rounding flips in later layers, not the backend's arithmetic.
    """
    model = make_model(family).eval()
    captured = []
    handles = [module.register_forward_pre_hook(lambda m, args: captured.append((m, args)))
               for module in model.modules() if hasattr(module, "has_gate") and hasattr(module, "_apply_gate")]
    ids, mask, _ = batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    assert captured
    errors = {"eager": 0.0, "grouped_mm": 0.0, "pesc": 0.0}
    for experts, (hidden, top_k_index, top_k_weights) in captured:
        with torch.no_grad():
            expected = experts(hidden, top_k_index, top_k_weights)
        for name in errors:
            bf16 = copy.deepcopy(experts).to(torch.bfloat16)
            bf16.config._experts_implementation = name
            try:
                with torch.no_grad():
                    got = bf16(hidden.bfloat16(), top_k_index, top_k_weights.bfloat16()).float()
            except RuntimeError as error:
                # torch._grouped_mm needs 16-byte strides: bf16 rows of 20 columns (the tiny Qwen
                # experts here) are refused, so transformers' grouped_mm has no result there.
                if name == "grouped_mm" and "strides should be multiple of 16 bytes" in str(error):
                    errors[name] = float("inf")
                    continue
                raise
            errors[name] += ((got - expected).norm() / expected.norm()).item()
    assert errors["eager"] < float("inf")
    assert errors["pesc"] <= min(errors["eager"], errors["grouped_mm"]) * 1.02, errors


def test_load_balancing_loss_equals_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    gen = torch.Generator().manual_seed(3)
    layers = tuple(torch.randn(2 * 9, 6, generator=gen, dtype=torch.float32).requires_grad_() for _ in range(3))
    _, mask, _ = batch()
    for attention_mask in (None, mask):
        expected = load_balancing_loss_func(layers, 6, 2, attention_mask)
        got = pesc_hf.hf_load_balancing_loss(layers, 6, 2, attention_mask)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        g_expected = torch.autograd.grad(expected, layers)
        g_got = torch.autograd.grad(got, layers)
        for a, b in zip(g_got, g_expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert pesc_hf.hf_load_balancing_loss(None, 6, 2) == 0
    with pytest.raises(ValueError, match="num_experts=5 but the logits have 6 columns"):
        pesc_hf.hf_load_balancing_loss(layers, 5, 2)


def test_expert_parallel_sentinels_are_dropped():
    """With _is_expert_parallel, ids >= E (slots of other ranks) contribute nothing, as in transformers."""
    model = make_model("gpt_oss")
    experts = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(10, 32, generator=gen)
    ids = torch.randint(0, experts.num_experts, (10, 2), generator=gen)
    weights = torch.rand(10, 2, generator=gen)
    ids[3, 1] = ids[7, 0] = experts.num_experts  # sentinels
    kept = ids < experts.num_experts
    experts._is_expert_parallel = True
    for implementation in ("grouped_mm", "pesc"):
        model.set_experts_implementation(implementation)
        leaf = x.clone().requires_grad_()
        out = experts(leaf, ids, weights * kept)
        out.sum().backward()
        if implementation == "grouped_mm":
            expected, expected_grad = out.detach(), leaf.grad
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=1e-5, atol=1e-6)
    # The pesc path also drops them when their weights are not zero.
    model.set_experts_implementation("pesc")
    one_slot = experts(x, ids.masked_fill(~kept, experts.num_experts), weights * kept)
    torch.testing.assert_close(experts(x, ids, weights), one_slot, rtol=1e-6, atol=1e-6)


def test_ungated_experts_with_bias_and_post_expert_norm():
    """has_gate=False (up_proj and act_fn), has_bias and has_post_expert_norm, on an experts class of
    the shape transformers' decorator expects, against its eager loop and the grouped_mm backend."""
    from transformers.integrations.moe import use_experts_implementation

    @use_experts_implementation(has_gate=False, has_bias=True, has_post_expert_norm=True)
    class UngatedExperts(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            E, d, F = 5, 12, 20
            self.num_experts = E
            self.up_proj = torch.nn.Parameter(torch.randn(E, F, d) * 0.3)
            self.up_proj_bias = torch.nn.Parameter(torch.randn(E, F) * 0.3)
            self.down_proj = torch.nn.Parameter(torch.randn(E, d, F) * 0.3)
            self.down_proj_bias = torch.nn.Parameter(torch.randn(E, d) * 0.3)
            self.act_fn = torch.nn.ReLU()
            self.post_expert_norm = torch.nn.LayerNorm(d)

        def forward(self, hidden_states, top_k_index, top_k_weights):
            out = torch.zeros_like(hidden_states)
            for t in range(hidden_states.shape[0]):
                for j, e in enumerate(top_k_index[t].tolist()):
                    h = self.act_fn(self.up_proj[e] @ hidden_states[t] + self.up_proj_bias[e])
                    y = self.post_expert_norm(self.down_proj[e] @ h + self.down_proj_bias[e])
                    out[t] = out[t] + top_k_weights[t, j] * y
            return out

    torch.manual_seed(6)
    experts = UngatedExperts(transformers.PretrainedConfig())
    x = torch.randn(9, 12)
    ids = torch.stack([torch.randperm(5)[:2] for _ in range(9)])
    weights = torch.rand(9, 2)
    results = {}
    for implementation in ("eager", "grouped_mm", "pesc"):
        experts.config._experts_implementation = implementation
        leaf = x.clone().requires_grad_()
        out = experts(leaf, ids, weights)
        grads = torch.autograd.grad(out.square().sum(), [leaf, *experts.parameters()])
        results[implementation] = (out, grads)
    for implementation in ("grouped_mm", "pesc"):
        torch.testing.assert_close(results[implementation][0], results["eager"][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(results[implementation][1], results["eager"][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_flags_and_refusals():
    model = make_model("deepseek_v3")
    router = model.model.layers[1].mlp.gate
    router.num_group = 8  # groups of one expert: transformers scores groups by their two best experts
    with pytest.raises(ValueError, match="cannot run on pesc exactly: groups of 1 expert"):
        pesc_hf.patch_moe(model)
    assert model.config._experts_implementation == "eager"  # nothing was changed
    assert pesc_hf.patch_moe(model, routers=False) == {"model.layers.1.mlp.experts": "experts: pesc"}

    class OtherRouter(torch.nn.Module):
        def forward(self, x):
            return x

    block = make_model("mixtral").model.layers[0].mlp
    block.gate = OtherRouter()
    with pytest.raises(ValueError, match=r"the router 'gate' \(.*OtherRouter\) is not one pesc reproduces exactly"):
        pesc_hf.patch_moe(block)
    with pytest.raises(ValueError, match="has no transformers experts module"):
        pesc_hf.patch_moe(torch.nn.Linear(2, 2))
    # A gate pesc does not fuse runs as the model wrote it.
    experts = make_model("olmoe").model.layers[0].mlp.experts
    assert pesc_hf.gated_activation_of(experts) == {"activation": "silu", "interleaved": False}
    experts.act_fn = torch.nn.Tanh()
    assert pesc_hf.gated_activation_of(experts) is None


def test_registered_backend_and_optional_import():
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    assert ALL_EXPERTS_FUNCTIONS["pesc"] is pesc_hf.pesc_experts_forward
    # transformers is optional: pesc_kernels never imports it, and the integration names the extra.
    code = ("import sys; sys.modules['transformers'] = None; import pesc_kernels; "
            "assert not [m for m in sys.modules if m.startswith('transformers') and sys.modules[m] is not None]\n"
            "try:\n    import pesc_kernels.integrations.transformers\nexcept ImportError as e:\n    print(e)")
    env = {**os.environ, "PYTHONPATH": str(Path(pesc_kernels.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert "needs Hugging Face transformers: pip install 'pesc_kernels[hf]'" in out


def test_permute_takes_hf_routing_tensors():
    """int64 ids and bf16 weights, as transformers' routers return them, without conversions."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 16, generator=gen)
    ids = torch.randint(0, 4, (7, 2), generator=gen)
    weights = torch.rand(7, 2, generator=gen).bfloat16()
    x_perm, row_map, offsets = ops.permute(x, ids, 4)
    assert torch.equal(x_perm, ops.permute(x, ids.int(), 4)[0])
    torch.testing.assert_close(ops.unpermute(x_perm, row_map, weights), ops.unpermute(x_perm, row_map, weights.float()))
