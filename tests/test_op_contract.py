"""The contract every op keeps, checked on every row of the op table: the ``OP_TABLE`` rows at the
end of each family's test file (row type in tests/op_info.py), collected here by reading which test
files define one, so a new family's test file joins the table without an edit to this file.

- opcheck: schema, fake (Meta) kernel against the real one, autograd registration, AOT dispatch
  with static and dynamic shapes, for every sample and dtype;
- torch.compile(fullgraph=True) of the public wrapper, values and gradients equal to eager;
- bitwise reproducibility of forward + backward at 1 and at 2 threads, and the same bits across
  thread counts for the ops documented as thread-count invariant;
- every bad input raises one error with one message through the kernel, the Meta kernel and the
  reference fallback (inputs whose check reads data: the CPU kernel);
- mixed devices raise, in the kernel and in the fallback;
- on a device without kernels the wrapper returns the reference's result, with a single warning;
- the table covers every op registered under torch.ops.pesc.
"""
import importlib
import warnings
from pathlib import Path

import pytest
import torch
from _helpers import call_cpu_kernel
from op_info import FLOAT_DTYPES

from pesc_kernels import _library

TABLE_MODULES = sorted(path.stem for path in Path(__file__).parent.glob("test_*.py")
                       if "\nOP_TABLE = [" in path.read_text())
OP_DB = [info for name in TABLE_MODULES for info in importlib.import_module(name).OP_TABLE]
OPS_BY_NAME = {info.name: info for info in OP_DB}

PUBLIC_OPS = [info for info in OP_DB if info.public is not None]
# Ops with at least two tensor arguments in their first sample (topk_gating has one).
MULTI_TENSOR_OPS = [info for info in OP_DB
                    if sum(isinstance(a, torch.Tensor) for a in info.samples(torch.device("cpu"), torch.float32)[0])
                    >= 2]


def _ids(infos):
    return [info.name for info in infos]


def _tensors(value):
    """The tensors of an op's output (a tensor or a tuple of them)."""
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _fresh(args):
    """Copies of the arguments: leaves that require grad where the originals did."""
    return tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)


def _forward_backward(info, args):
    """Outputs of the public wrapper and the gradients of a fixed weighted sum of its float outputs."""
    args = _fresh(args)
    outs = _tensors(info.public(*args))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    loss = sum((o.float() * torch.linspace(0.5, 1.5, o.numel(), device=o.device).view(o.shape)).sum()
               for o in outs if o.is_floating_point() and o.requires_grad)
    grads = list(torch.autograd.grad(loss, leaves)) if leaves and isinstance(loss, torch.Tensor) else []
    return [o.detach() for o in outs] + grads


@pytest.fixture
def no_kernels(monkeypatch):
    """Every device behaves as one without compiled kernels (MPS, XPU): the wrappers fall back."""
    monkeypatch.setattr(_library, "has_kernel", lambda op, device_type: False)
    monkeypatch.setattr(_library, "_warned_devices", set())


def test_every_registered_op_is_in_the_table():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pesc::")}
    assert len(OPS_BY_NAME) == len(OP_DB), "an op has two rows"
    missing = sorted(registered - set(OPS_BY_NAME))
    assert registered == set(OPS_BY_NAME), f"add an OP_TABLE row to the family's test file for {missing}"


@pytest.mark.parametrize("info", OP_DB, ids=_ids(OP_DB))
def test_opcheck(info, device):
    for dtype in FLOAT_DTYPES:
        samples = info.samples(device, dtype)
        assert samples, info.name
        for args in samples:
            torch.library.opcheck(info.op, args)


@pytest.mark.parametrize("info", PUBLIC_OPS, ids=_ids(PUBLIC_OPS))
def test_torch_compile_fullgraph(info, device):
    for dtype in (torch.float32, torch.bfloat16):
        args = info.samples(device, dtype)[0]
        torch._dynamo.reset()
        compiled = torch.compile(info.public, fullgraph=True)
        eager = _forward_backward(info, args)
        got = _forward_backward(type(info)(**{**info.__dict__, "public": compiled}), args)
        assert len(got) == len(eager)
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, msg=f"{info.name} {dtype}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("info", PUBLIC_OPS, ids=_ids(PUBLIC_OPS))
def test_bitwise_reproducible(info, dtype, device):
    args = info.large_sample(device, dtype)
    threads = [1, 2] if device.type == "cpu" else [torch.get_num_threads()]
    previous = torch.get_num_threads()
    runs = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            first, second = _forward_backward(info, args), _forward_backward(info, args)
            for a, b in zip(first, second, strict=True):
                assert torch.equal(a, b), f"{info.name}: two runs at {n} threads differ"
            runs[n] = first
    finally:
        torch.set_num_threads(previous)
    if info.thread_invariant and len(runs) == 2:
        for a, b in zip(runs[1], runs[2], strict=True):
            assert torch.equal(a, b), f"{info.name}: 1 and 2 threads give different bits"


def _meta(args):
    return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("info", OP_DB, ids=_ids(OP_DB))
def test_bad_inputs_raise_the_same_error_on_every_path(info, device, no_kernels):
    bad_inputs = info.bad_inputs(device)
    assert bad_inputs, f"{info.name} has no bad-input cases"
    for bad in bad_inputs:
        if bad.reads_data and device.type != "cpu":
            continue  # CUDA keeps such inputs in bounds instead of raising (family tests cover that)
        with pytest.raises(bad.error, match=bad.match):
            call_cpu_kernel(info.op, *bad.args) if device.type == "cpu" else info.op(*bad.args)
        if bad.reads_data:
            continue
        with pytest.raises(bad.error, match=bad.match):
            info.op(*_meta(bad.args))  # the fake implementation torch.compile and opcheck use
        if info.public is not None:
            with pytest.warns(RuntimeWarning, match="falling back"), pytest.raises(bad.error, match=bad.match):
                _library._warned_devices.clear()
                info.public(*bad.args)


@pytest.mark.parametrize("info", MULTI_TENSOR_OPS, ids=_ids(MULTI_TENSOR_OPS))
def test_mixed_devices_raise(info, no_kernels):
    """The meta device stands in for "another device" (with no GPU): the CPU kernel is called directly."""
    args = info.samples(torch.device("cpu"), torch.float32)[0]
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    moved = list(args)
    moved[positions[-1]] = args[positions[-1]].detach().to("meta")
    pattern = r"is on (meta|cpu) but \w+ is on (cpu|meta); all tensors must be on the same device"
    with pytest.raises(ValueError, match=pattern):
        call_cpu_kernel(info.op, *moved)
    if info.public is not None:
        with warnings.catch_warnings(), pytest.raises(ValueError, match=pattern):
            warnings.simplefilter("ignore")
            info.public(*moved)


@pytest.mark.parametrize("info", PUBLIC_OPS, ids=_ids(PUBLIC_OPS))
def test_fallback_returns_the_reference_result_with_one_warning(info, no_kernels):
    args = info.samples(torch.device("cpu"), torch.float32)[0]
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch reference on cpu"):
        got = info.public(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        again = info.public(*args)
    expected = info.reference(*args)
    for a, b, c in zip(_tensors(got), _tensors(again), _tensors(expected), strict=True):
        assert torch.equal(a, c) and torch.equal(b, c), info.name
