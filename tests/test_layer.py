"""PESCConfig and the PESCMoE layer, against the reference layers (pure PyTorch, Camelidae, Sparsetral).

Covers config presets, validation and JSON round trips; initialisation (crafted == dense); values
and gradients against all three reference layers over odd shapes, activations and dtypes; dropout;
the router state kept for the losses; autocast; torch.compile; determinism; bad input.
"""
import math

import pytest
import torch
from _helpers import assert_close_to_reference, max_abs_err
from conftest import FLOAT_DTYPES
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from pesc_kernels import PESCConfig, PESCMoE, _library, ops, reference

REFERENCE_IMPLS = ("reference", "camelidae", "sparsetral")  # PESCMoE(impl=...) besides the default "ops"


def make_ffn(d, device="cpu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=d, intermediate_size=2 * d + 3, num_attention_heads=1, num_key_value_heads=1)
    return LlamaMLP(config).to(device=device, dtype=dtype)


def make_layer(impl, d, config, device="cpu", dtype=torch.float32, seed=0, ffn=None):
    """A layer with non-trivial adapters (w_up is zero at init) and well-separated router logits."""
    layer = PESCMoE(ffn if ffn is not None else make_ffn(d, device, dtype, seed), d, config, impl=impl)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        layer.w_up.copy_(0.5 * torch.randn(layer.w_up.shape, dtype=torch.float64))
        layer.router.weight.mul_(4.0)
    return layer


def copy_layer(impl, layer, ffn=None, dtype=None):
    """A layer of ``impl`` on the same FFN and parameters (converted to ``dtype``)."""
    ffn = ffn if ffn is not None else layer.ffn
    other = PESCMoE(ffn, layer.hidden_size, layer.config, impl=impl)
    other.load_state_dict({k: v.to(dtype) if dtype else v for k, v in layer.state_dict().items()})
    return other.train(layer.training)


def outputs_and_grads(layer, x, upstream):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    params = [x, layer.router.weight, layer.w_down, layer.w_up]
    grads = torch.autograd.grad((y.double() * upstream).sum(), params, allow_unused=True, materialize_grads=True)
    return [y.detach(), *grads]


NAMES = ("y", "grad_x", "grad_router", "grad_w_down", "grad_w_up")


def assert_close_fp32(actual, expected, name, rel=1e-5):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = max_abs_err(actual, expected)
    assert actual.shape == expected.shape, name
    assert err <= rel * max(scale, 1e-6), f"{name}: max error {err:.3e} > {rel:g} * {scale:.3e}"


# ------------------------------------------------------------------------------------------ config
def test_config_presets_follow_design():
    assert PESCConfig.camelidae() == PESCConfig(num_experts=8, top_k=2, adapter_dim=512, scaling=0.25,
                                                adapter_dropout=0.1)
    assert PESCConfig.pesc_script() == PESCConfig(num_experts=8, top_k=2, adapter_dim=64, scaling=1.0)
    assert PESCConfig.sparsetral() == PESCConfig(num_experts=16, top_k=4, adapter_dim=512, scaling=1.0)
    c = PESCConfig()
    assert (c.activation, c.aux_loss_coef, c.z_loss_coef, c.normalize_top_k, c.target_modules) == (
        "gelu", 0.01, 0.0, True, ["mlp"])
    assert PESCConfig.camelidae(adapter_dim=64).adapter_dim == 64
    assert PESCConfig(target_modules="feed_forward").target_modules == ["feed_forward"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=3, num_experts=2), "top_k (3) must be <= num_experts (2)"),
    (dict(num_experts=0), "num_experts must be in [1, 1024]"),
    (dict(num_experts=2000), "num_experts must be in [1, 1024]"),
    (dict(num_experts=8.0), "num_experts must be an int"),
    (dict(top_k=0), "top_k must be in"),
    (dict(adapter_dim=0), "adapter_dim must be in [1, 1024]"),
    (dict(adapter_dim=True), "adapter_dim must be an int"),
    (dict(activation="tanh"), "activation must be one of gelu, gelu_tanh, silu, relu, identity"),
    (dict(scaling=float("nan")), "scaling must be a finite number"),
    (dict(adapter_dropout=1.0), "adapter_dropout must be in [0, 1)"),
    (dict(adapter_dropout=-0.1), "adapter_dropout must be in [0, 1)"),
    (dict(aux_loss_coef=-1.0), "aux_loss_coef must be >= 0"),
    (dict(z_loss_coef="0"), "z_loss_coef must be a finite number"),
    (dict(normalize_top_k=1), "normalize_top_k must be a bool"),
    (dict(target_modules=[]), "target_modules must be a non-empty list"),
    (dict(target_modules=["mlp", ""]), "target_modules must be a non-empty list"),
])
def test_config_validation_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        PESCConfig(**kwargs)
    assert message in str(error.value)


def test_config_round_trips(tmp_path):
    config = PESCConfig.camelidae(activation="silu", z_loss_coef=1e-3, normalize_top_k=False,
                                  target_modules=["mlp", "feed_forward"])
    assert PESCConfig.from_dict(config.to_dict()) == config
    config.to_json_file(tmp_path / "c.json")
    assert PESCConfig.from_json_file(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match=r"unknown fields \['experts'\]"):
        PESCConfig.from_dict({"experts": 8})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        PESCConfig.from_json_file(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"top_k": 9}')
    with pytest.raises(ValueError, match="top_k"):
        PESCConfig.from_json_file(tmp_path / "bad2.json")


# ------------------------------------------------------------------------------------ init + shape
@pytest.mark.parametrize("shape", [(2, 5), (11,), (1, 1), (0,)], ids=str)
def test_init_equals_the_dense_ffn(shape, device):
    d = 24
    ffn = make_ffn(d, device)
    layer = PESCMoE(ffn, d, PESCConfig(num_experts=4, top_k=2, adapter_dim=8))
    assert not any(p.requires_grad for p in ffn.parameters())
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["w_down", "w_up", "router.weight"]
    assert layer.w_down.shape == (4, d, 8) and layer.w_up.shape == (4, 8, d) and layer.router.weight.shape == (4, d)
    assert torch.count_nonzero(layer.w_up) == 0
    assert layer.w_down.abs().max() <= 1 / math.sqrt(d) and layer.w_down.std() > 0.5 / math.sqrt(3 * d)
    x = torch.randn(*shape, d, device=device)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, ffn(x))


def test_parameters_follow_the_ffn_device_and_dtype(device):
    ffn = make_ffn(16, device, torch.bfloat16)
    layer = PESCMoE(ffn, 16, PESCConfig(num_experts=2, top_k=1, adapter_dim=4))
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {(device.type, torch.bfloat16)}
    explicit = PESCMoE(make_ffn(16), 16, PESCConfig(num_experts=2, top_k=1, adapter_dim=4), dtype=torch.float64)
    assert explicit.w_down.dtype == torch.float64


# --------------------------------------------------------------------------- agreement (fp32)
CASES = [  # T, d, E, k, r, activation, scaling, normalize
    (0, 16, 4, 2, 8, "gelu", 1.0, True),
    (1, 16, 4, 2, 8, "gelu", 1.0, True),
    (37, 20, 1, 1, 5, "gelu", 0.25, True),
    (64, 36, 8, 2, 16, "gelu_tanh", 0.25, True),
    (50, 12, 8, 8, 3, "silu", 2.0, True),
    (65, 24, 16, 4, 32, "relu", 1.0, True),
    (33, 8, 6, 3, 1, "identity", 1.0, True),
    (40, 24, 8, 2, 8, "gelu", 1.0, False),
]


@pytest.mark.parametrize("T, d, E, k, r, activation, scaling, normalize", CASES)
def test_matches_reference_layers(T, d, E, k, r, activation, scaling, normalize, device):
    config = PESCConfig(num_experts=E, top_k=k, adapter_dim=r, activation=activation, scaling=scaling,
                        normalize_top_k=normalize)
    layer = make_layer("ops", d, config, device, seed=T + E)
    x = torch.randn(T, d, device=device)
    upstream = torch.randn(T, d, dtype=torch.float64, device=device)
    ours = outputs_and_grads(layer, x, upstream)
    for label in REFERENCE_IMPLS:
        if label == "camelidae" and not normalize:
            continue  # the official forward cannot express unnormalised weights (checked below)
        other = copy_layer(label, layer)
        theirs = outputs_and_grads(other, x, upstream)
        for name, a, b in zip(NAMES, ours, theirs):
            assert_close_fp32(a, b, f"{label} {name} T={T} E={E} k={k} {activation}")
        assert torch.equal(other.expert_indices, layer.expert_indices), label  # same routing, recorded for the losses
    assert layer.expert_indices.dtype == torch.int32 and layer.expert_indices.shape == (T, k)
    assert layer.router_logits.shape == (T, E) and layer.token_mask is None


def test_batched_input_matches_flat_input(device):
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)
    layer = make_layer("ops", 16, config, device)
    x = torch.randn(3, 7, 16, device=device)
    assert torch.equal(layer(x), layer(x.reshape(21, 16)).reshape(3, 7, 16))


def test_camelidae_rejects_unnormalized_weights():
    with pytest.raises(ValueError, match="normalize_top_k=False is not representable"):
        PESCMoE(make_ffn(8), 8, PESCConfig(num_experts=4, top_k=2, normalize_top_k=False), impl="camelidae")


# ------------------------------------------------------------------------ agreement (fp16 / bf16)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_low_precision_within_reference_error(dtype, device):
    """Ours vs fp64 within a small multiple of the reference layer's own error in that dtype."""
    d, config = 40, PESCConfig(num_experts=8, top_k=2, adapter_dim=16, scaling=0.5)
    ffn64 = make_ffn(d, device, torch.float64)
    layer64 = make_layer("reference", d, config, device, torch.float64, ffn=ffn64)
    ffn = make_ffn(d, device, dtype)
    ffn.load_state_dict(ffn64.state_dict())
    ours = copy_layer("ops", layer64, ffn=ffn, dtype=dtype)
    ref = copy_layer("reference", layer64, ffn=ffn, dtype=dtype)
    x = torch.randn(300, d, device=device, dtype=torch.float64).to(dtype)
    upstream = torch.randn(300, d, dtype=torch.float64, device=device)
    results = [outputs_and_grads(m, xx, upstream) for m, xx in ((ours, x), (ref, x), (layer64, x.double()))]
    assert results[0][0].dtype == dtype
    assert torch.equal(ours.expert_indices, ref.expert_indices)
    for i, name in enumerate(NAMES):
        assert_close_to_reference(results[0][i], results[1][i], results[2][i], name=f"{name} {dtype}")


# ------------------------------------------------------------------------------------- dropout
def test_dropout_applies_to_the_adapter_input_only(device):
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, adapter_dropout=0.5)
    layer = make_layer("ops", 16, config, device).train()
    ref = copy_layer("reference", layer)
    x = torch.randn(64, 16, device=device)
    torch.manual_seed(5)
    y_train = layer(x)
    torch.manual_seed(5)
    y_ref = ref(x)
    assert_close_fp32(y_train, y_ref, "same RNG state, same dropout mask")
    y_eval = layer.eval()(x)
    assert max_abs_err(y_train, y_eval) > 1e-3  # dropout was active in training...
    assert torch.equal(y_eval, copy_layer("ops", layer).eval()(x))  # ...and is off in eval
    # The residual path is never dropped: with zero adapters training mode returns ffn(x) exactly.
    with torch.no_grad():
        layer.w_up.zero_()
    assert torch.equal(layer.train()(x), layer.ffn(x))


# -------------------------------------------------------------------------------- router state
def test_router_state_and_token_mask(device):
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)
    layer = make_layer("ops", 16, config, device)
    x = torch.randn(2, 5, 16, device=device)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], device=device)
    layer.attention_mask = mask
    layer(x)
    assert torch.equal(layer.token_mask, mask.reshape(-1).bool())
    weights, indices = reference.topk_gating(layer.router_logits, 2)
    assert torch.equal(layer.expert_indices, indices)
    layer(x[:, -2:])  # decoding with a KV cache: the mask covers past + current positions
    assert torch.equal(layer.token_mask, mask[:, -2:].reshape(-1).bool())
    layer.attention_mask = torch.ones(3, 5, device=device)
    with pytest.raises(ValueError, match=r"attention_mask of shape \(3, 5\) does not match the layer input"):
        layer(x)


@pytest.mark.parametrize("impl", ["ops", "reference"])
def test_training_computes_the_balancing_loss_with_the_routing(impl, device):
    """The fused op's loss is load_balancing_loss of the recorded routing: same bits, same gradient."""
    api = ops if impl == "ops" else reference
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.1)
    layer = make_layer(impl, 16, config, device).train()
    x = torch.randn(2, 5, 16, device=device)
    layer.attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], device=device)
    layer(x)
    expected = api.load_balancing_loss(layer.router_logits, layer.expert_indices, layer.token_mask)
    assert layer.balancing_loss is not None and torch.equal(layer.balancing_loss, expected)
    (grad,) = torch.autograd.grad(layer.balancing_loss, layer.router.weight, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, layer.router.weight)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)
    layer.eval()(x)  # not training: the losses are computed later, if at all
    assert layer.balancing_loss is None
    zero_coef = make_layer(impl, 16, PESCConfig(num_experts=4, top_k=2, adapter_dim=8, aux_loss_coef=0.0), device)
    zero_coef.train()(x)
    assert zero_coef.balancing_loss is None


# -------------------------------------------------------------------------- autocast, compile
def test_autocast_bf16_with_fp32_parameters():
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)
    layer = make_layer("ops", 16, config)
    x = torch.randn(2, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for p in (layer.router.weight, layer.w_down, layer.w_up):
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
    with torch.no_grad():
        y_fp32 = layer(x)
    assert max_abs_err(y, y_fp32) < 0.05 * y_fp32.abs().max().item()


def test_torch_compile(device):
    """torch.compile of the layer matches eager, values and gradients.

    fullgraph=True needs every op compiled for the device (the reference fallback synchronises
    with the host, e.g. to read segment bounds, which is a graph break); without them the layer
    compiles with graph breaks.
    """
    ops_needed = ("topk_gating", "permute", "adapter", "unpermute")
    fullgraph = all(_library.has_kernel(op, device.type) for op in ops_needed)
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)
    layer = make_layer("ops", 16, config, device)
    x = torch.randn(2, 12, 16, device=device)
    upstream = torch.randn(2, 12, 16, dtype=torch.float64, device=device)
    eager = outputs_and_grads(layer, x, upstream)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=fullgraph)
    got = outputs_and_grads(compiled, x, upstream)
    for name, a, b in zip(NAMES, got, eager):
        assert_close_fp32(a, b, f"compiled {name}")
    assert layer.router_logits.shape == (24, 4)  # the side effect on the module survives compilation


def test_bitwise_deterministic(device):
    config = PESCConfig(num_experts=8, top_k=2, adapter_dim=16)
    layer = make_layer("ops", 32, config, device)
    x = torch.randn(200, 32, device=device)
    upstream = torch.randn(200, 32, dtype=torch.float64, device=device)
    first, second = outputs_and_grads(layer, x, upstream), outputs_and_grads(layer, x, upstream)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------ bad input
class _Widen(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, x], dim=-1)


def test_bad_input_errors():
    config = PESCConfig(num_experts=4, top_k=2, adapter_dim=8)
    layer = PESCMoE(make_ffn(16), 16, config)
    with pytest.raises(ValueError, match=r"input must have shape \[\.\.\., 16\].*got \(3, 8\)"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"input must have shape"):
        layer(torch.randn(16))
    with pytest.raises(ValueError, match=r"must map hidden -> hidden.*returned \(3, 32\)"):
        PESCMoE(_Widen(), 16, config)(torch.randn(3, 16))
    with pytest.raises(TypeError, match="config must be a PESCConfig"):
        PESCMoE(make_ffn(16), 16, {"num_experts": 4})
    with pytest.raises(TypeError, match="ffn must be an nn.Module"):
        PESCMoE(lambda x: x, 16, config)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        PESCMoE(make_ffn(16), 0, config)
    with pytest.raises(ValueError, match="impl must be one of ops, reference, camelidae, sparsetral; got 'triton'"):
        PESCMoE(make_ffn(16), 16, config, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        layer.impl = "fast"
    assert layer.impl == "ops"


def test_layer_is_created_on_the_device_of_an_integer_only_ffn():
    """Quantised FFNs (4-bit weights are uint8) have no float parameter to copy a dtype from; the router
    and adapters must still land on the FFN's device (meta stands in for a GPU here)."""
    ffn = torch.nn.Module()
    ffn.packed = torch.nn.Parameter(torch.zeros(16, dtype=torch.uint8, device="meta"), requires_grad=False)
    layer = PESCMoE(ffn, 8, PESCConfig(num_experts=2, top_k=1, adapter_dim=2))
    assert {p.device.type for p in (layer.router.weight, layer.w_down, layer.w_up)} == {"meta"}
    assert layer.w_down.dtype == torch.get_default_dtype()
