"""Run megatron-core on the CPU: the one-rank HF <-> Megatron conversion on a machine without a
GPU (lwm.models.megatron_ckpt), and megatron-core's model and optimizer over gloo in the tests.

Megatron assumes CUDA in a few dozen places that do no GPU work of their own: tensors created
with device='cuda' or torch.cuda.current_device(), `.cuda()` moves, `tensor.type()` checks
against 'torch.cuda.FloatTensor', a side stream in the all-to-all dispatcher, the CUDA RNG
behind its RNG tracker. Rather than patching each call site (which moves with every release),
`enable()` maps them all onto the CPU:
- a TorchFunctionMode rewrites CUDA devices to 'cpu' in every torch call, makes `.cuda()` a
  no-op and reports CPU tensors' type() as the CUDA type Megatron checks for;
- the torch.cuda functions Megatron calls directly (current_device, Stream, synchronize, RNG
  state) become CPU equivalents;
- the all-to-all's split sizes reach gloo as lists;
- Gated DeltaNet needs flash-linear-attention's Triton kernels (GPU only): its l2norm and causal
  conv become torch code and its chunked delta rule Megatron's own torch implementation.
The arithmetic is Megatron's own, so losses here are the losses a GPU run computes up to
floating-point order. Nothing imports this module where CUDA is available; training on the CPU
is for the tests only (`enable(training=True)`, which tells the Megatron engine it may).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_enabled = False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # a bare int device index means a CUDA device
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaAsCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _gated_delta_net_on_torch() -> None:
    """flash-linear-attention's kernels (l2norm, the chunked delta rule, and from megatron-core
    0.18 its causal conv) as torch code, set wherever Megatron looks them up: the module in
    0.16-0.18, the package's common/gdn modules from 0.19."""
    import importlib

    import megatron.core.ssm.gated_delta_net as gdn
    if gdn.HAVE_FLA:
        return
    modules = [gdn]
    for sub in ("common", "gdn"):
        try:
            modules.append(importlib.import_module(f"{gdn.__name__}.{sub}"))
        except ImportError:
            pass

    def l2norm(x, dim=-1, eps=1e-6):
        return x * torch.rsqrt(x.pow(2).sum(dim, keepdim=True) + eps)

    def causal_conv1d(x, weight, bias=None, activation=None, cu_seqlens=None, **_):
        """[b, s, d] through a depthwise causal conv of weight [d, w]; (output, no state)."""
        y = torch.nn.functional.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias,
                                       padding=weight.shape[-1] - 1, groups=weight.shape[0])
        y = y[..., :x.shape[1]].transpose(1, 2)
        return (torch.nn.functional.silu(y) if activation in ("silu", "swish") else y), None

    for module in modules:
        for name, value in (("HAVE_FLA", True), ("l2norm", l2norm), ("causal_conv1d", causal_conv1d),
                            ("chunk_gated_delta_rule", gdn.torch_chunk_gated_delta_rule)):
            setattr(module, name, value)


class _NoStream:
    """torch.cuda.Stream (and the Event it records) stand-in: work is synchronous on CPU."""

    def __init__(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, *a, **k):
        return self

    def query(self):
        return True

    def synchronize(self):
        pass


def enable(training: bool = False) -> None:
    """Patch once per process (idempotent); call before building Megatron models."""
    global _enabled
    if training:
        import os
        os.environ["LWM_MEGATRON_ON_CPU"] = "1"  # lwm.train.engines.megatron.CPU_ENV: the loop may run on CPU
    if _enabled:
        return
    _enabled = True
    import megatron.core.tensor_parallel.random as mrandom
    cuda = torch.cuda
    # "cpu" rather than an index: autograd runs backward outside the TorchFunctionMode, and
    # Megatron's backward passes allocate with device=torch.cuda.current_device() too
    cuda.current_device = lambda: "cpu"
    cuda.device_count = lambda: 1
    cuda.Stream = _NoStream
    cuda.current_stream = lambda *a, **k: _NoStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.set_device = lambda *a, **k: None
    # one CPU generator stands in for the per-device CUDA generators the RNG tracker forks
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    mrandom._get_cuda_rng_state = lambda *a, clone=False, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # The RNG tracker warns when the CPU generator moves inside a forked CUDA stream; here the
    # CUDA stream is the CPU generator, so that always happens and means nothing.
    logging.getLogger(mrandom.__name__).setLevel(logging.ERROR)
    _gated_delta_net_on_torch()
    # The all-to-all dispatcher moves its split sizes to the host at a "dtoh" point that the
    # CUDA path uses; here they arrive as tensors, which gloo's binding refuses.
    a2a = torch.distributed.all_to_all_single

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, *a, **k):
        as_list = lambda s: s.tolist() if isinstance(s, torch.Tensor) else s  # noqa: E731
        return a2a(output, input, as_list(output_split_sizes), as_list(input_split_sizes), *a, **k)
    torch.distributed.all_to_all_single = all_to_all_single
    _CudaAsCpu().__enter__()  # for the rest of the process
