"""Bytes a GPU kernel must move, per ATen operator: the rules every path of the roofline
applies, written down once.

A kernel's compulsory traffic is every tensor it reads and every tensor it writes, once
each (a lower bound for DRAM traffic: caches can only remove re-reads, never these). An
operator costs the kernels PyTorch's CUDA backend launches for it, not one read per
operator; where that differs from "read the inputs, write the outputs" a rule below says
so, with the CUDA source it comes from (paths in github.com/pytorch/pytorch):

- training BatchNorm, forward: a statistics kernel reads the input, a second kernel reads
  it again to normalise and writes the output (``aten/src/ATen/native/cuda/
  Normalization.cu``: ``batch_norm_cuda`` calls ``batch_norm_stats_cuda`` then
  ``batch_norm_elemt_cuda``; channels_last: ``batch_norm_collect_statistics_channels_last
  _kernel`` then ``batch_norm_elemt_channels_last_kernel`` in ``Normalization.cuh``);
- training BatchNorm, backward: a reduction kernel reads the output gradient and the
  input (sum of dy and of dy * x-hat), an elementwise kernel reads both again and writes
  the input gradient (``batch_norm_backward_reduce_cuda`` then
  ``batch_norm_backward_elemt_cuda``; channels_last the ``_channels_last_kernel`` pair);
- GroupNorm, forward and backward: the same two passes as training BatchNorm (moments,
  then the elementwise pass; backward, the per-group reductions of dy and dy * x, then
  the elementwise input gradient) (``aten/src/ATen/native/cuda/group_norm_kernel.cu``:
  ``RowwiseMomentsCUDAKernel`` then the forward kernel; ``ComputeInternalGradientsCUDA
  Kernel`` then the backward elementwise kernel);
- convolution with a bias: the convolution kernel, then an in-place bias add that reads
  and writes the output (``aten/src/ATen/native/Convolution.cpp``, ``_convolution``:
  cuDNN's output gets ``output.add_(reshape_bias(...))``);
- convolution backward: one kernel per gradient asked for, each reading what it needs:
  the input gradient reads dy and the weight, the weight gradient reads dy and the input,
  the bias gradient reads dy (``Convolution.cpp``, ``convolution_backward``; cuDNN's
  ``cudnn_convolution_backward_input`` / ``_weight`` in ``cudnn/ConvShared.cpp``);
- max-pool backward: reads the output gradient and the indices, writes the input
  gradient; the input itself, an argument of the operator, is not read
  (``aten/src/ATen/native/cuda/DilatedMaxPool2d.cu``, ``max_pool_backward_nchw`` /
  ``_nhwc``);
- scatter-add: the scattering kernel reads the index and the source and writes only the
  elements it scatters to (``aten/src/ATen/native/cuda/ScatterGatherKernel.cu``); the
  out-of-place form copies ``self`` first (a read and a write of it). Inductor decomposes
  a max-pool backward into a zero-filled gradient and a scatter-add;
- views and metadata (``view``, ``permute``, ``expand``, ``detach``, ``t``, ...) and
  allocations (``empty*``) move nothing;
- in-place and ``out=`` operators: the tensors they mutate are written, and read too
  unless the operator only overwrites them (``copy_``, ``fill_``, ``zero_``, random
  fills); the optimizer's ``_foreach_*`` operators are counted the same way, every tensor
  of every list once (``multi_tensor_apply`` batches them into few launches; the bytes do
  not change).

An expanded (stride-0) dimension is read once. The same tensor passed twice to one
kernel is read once. Everything else: each tensor input read once, each output written
once.

Kernels whose tiling re-reads an input from DRAM by design are not charged for it here
(compulsory traffic only); ``REREAD_NOTES`` names the ones known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils._pytree import tree_leaves

__all__ = ["REREAD_NOTES", "is_free", "op_kernels", "tensor_bytes"]

aten = torch.ops.aten

REREAD_NOTES = (
    "Implicit-GEMM convolutions read each input pixel once per block of output channels "
    "they produce: cuDNN's cdiv(COUT, its tile), fastcifar's tl.dot forward "
    "(conv_fwd_dot_kernel, grid pixels x cdiv(COUT, BLOCK_N)) cdiv(COUT, 32) times with "
    "GPU_TILES' dense BLOCK_N = 32: 16 at 512 channels; its input gradient reads dy "
    "cdiv(CIN, BLOCK_N) times. Its weight gradient (grid partials x cdiv(COUT, BLOCK_N) x "
    "taps * cdiv(CIN, BLOCK_K)) reads dy taps * cdiv(CIN, 16) times and x "
    "cdiv(COUT, 32) times a tap. The elementwise depthwise/grouped kernels read each "
    "channel once. At CIFAR sizes much of this hits L2; none of it is charged here.",
    "PyTorch's NCHW BatchNorm backward (batch_norm_backward_kernel) reduces and applies "
    "in one kernel that walks the channel's plane twice: counted as the two reads above.",
)

# operators that move nothing: views, metadata, allocations, profiler markers
_FREE_NAMESPACES = {"prim", "profiler"}
_FREE = {
    "detach",
    "alias",
    "view",
    "_unsafe_view",
    "reshape",
    "t",
    "transpose",
    "permute",
    "expand",
    "squeeze",
    "unsqueeze",
    "slice",
    "select",
    "as_strided",
    "unfold",
    "_reshape_alias",
    "view_as",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "lift_fresh",
    "_to_copy_if_needed",
    "set_",
    "resize_",
    "_local_scalar_dense",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
    "record_stream",
}
# mutating operators that overwrite what they mutate without reading it
_WRITE_ONLY = {
    "copy_",
    "fill_",
    "zero_",
    "normal_",
    "uniform_",
    "bernoulli_",
    "random_",
    "exponential_",
    "zeros_like",
    "ones_like",
    "full_like",
    "zeros",
    "ones",
    "full",
    "scalar_tensor",
    "arange",
    "randn",
    "rand",
    "randint",
}


def _name(func) -> str:
    """``aten.add_.Tensor`` -> ``add_``."""
    return func._schema.name.split("::")[-1]


def is_free(func) -> bool:
    """Whether ``func`` (an OpOverload) moves no bytes: a view, metadata or allocation.

    Args:
        func: an ``OpOverload``.

    Returns:
        True when it moves no bytes.
    """
    return func.namespace in _FREE_NAMESPACES or _name(func) in _FREE


def tensor_bytes(t: torch.Tensor, sizes: Callable[[object], int] = int) -> int:
    """Bytes of the elements ``t`` addresses: an expanded (stride-0) dimension once.
    ``sizes`` turns a (symbolic) size into an int (the compile path evaluates its symbolic
    batch with it).

    Args:
        t: any tensor (real, meta or fake).
        sizes: turns a size into an int.

    Returns:
        Bytes.
    """
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= sizes(size)
    return n * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _unique(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor once (the same object, or a tensor of the same storage, offset,
    shape and strides, is one read)."""
    seen, out = set(), []
    for t in tensors:
        try:
            key = (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride())
        except (RuntimeError, NotImplementedError):
            key = id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _mutated(func, args, kwargs) -> list[torch.Tensor]:
    """The tensor arguments ``func``'s schema marks as written (``Tensor(a!)``)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        info = arg.alias_info
        if info is None or not info.is_write:
            continue
        value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
        out += _tensors(value)
    return out


def _default(func, args, kwargs, out, size) -> list[int]:
    """One kernel: unique tensor inputs read once, outputs written once, mutated
    arguments written (and read, unless the operator only overwrites them)."""
    mutated = _mutated(func, args, kwargs)
    mutated_ids = {id(t) for t in mutated}
    write_only = _name(func) in _WRITE_ONLY
    reads = [t for t in _tensors((args, kwargs)) if not (write_only and id(t) in mutated_ids)]
    outs = [t for t in _tensors(out) if id(t) not in mutated_ids]
    if func._schema.returns and all(r.alias_info is not None for r in func._schema.returns):
        outs = []  # returns alias the mutated inputs: written once, below
    total = sum(tensor_bytes(t, size) for t in _unique(reads))
    total += sum(tensor_bytes(t, size) for t in _unique(mutated + outs))
    return [total]


def _training(func, args, kwargs) -> bool:
    """The value of ``func``'s ``training`` (or ``train``) argument; False where it has
    none (``_native_batch_norm_legit_no_training``)."""
    for i, arg in enumerate(func._schema.arguments):
        if arg.name in ("training", "train"):
            return bool(args[i] if i < len(args) else kwargs.get(arg.name, False))
    return False


def _batch_norm(func, args, kwargs, out, size) -> list[int]:
    """native_batch_norm(input, weight, bias, running_mean, running_var, training, ...)."""
    if not _training(func, args, kwargs):
        return _default(func, args, kwargs, out, size)
    small = sum(tensor_bytes(t, size) for t in _tensors(args[1:5]))  # weight ... running var
    outs = _tensors(out)  # y, save_mean, save_invstd
    return _two_pass(args[0], outs[0], small, sum(tensor_bytes(t, size) for t in outs[1:]), size)


def _batch_norm_backward(func, args, kwargs, out, size) -> list[int]:
    """native_batch_norm_backward(grad_out, input, weight, running_mean, running_var,
    save_mean, save_invstd, train, eps, output_mask)."""
    train = _name(func) == "cudnn_batch_norm_backward" or _training(func, args, kwargs)
    if not train:
        return _default(func, args, kwargs, out, size)
    return _two_pass_backward(args, kwargs, out, _tensors(args[2:7]), size)


def _two_pass(x, y, small: int, stats: int, size) -> list[int]:
    """Statistics pass (x in, statistics out), then elementwise (x, statistics in, y out)."""
    return [
        tensor_bytes(x, size) + small + stats,
        tensor_bytes(x, size) + tensor_bytes(y, size) + small + stats,
    ]


def _two_pass_backward(args, kwargs, out, small: list, size) -> list[int]:
    """A normalisation's backward (grad_out, input, ..., output_mask at position 9) ->
    (dx, dweight, dbias): a reduction kernel (dy, x and ``small`` in, the parameter
    gradients out), then the elementwise input gradient (dy, x and ``small`` in, dx out)."""
    act = tensor_bytes(args[0], size) + tensor_bytes(args[1], size)
    small_bytes = sum(tensor_bytes(t, size) for t in small)
    mask = args[9] if len(args) > 9 else kwargs.get("output_mask", [True, True, True])
    dx, *grads = (out[i] if mask[i] else None for i in range(3))
    grad_bytes = sum(tensor_bytes(t, size) for t in grads if t is not None)
    dx_bytes = tensor_bytes(dx, size) if dx is not None else 0
    return [act + small_bytes + grad_bytes, act + small_bytes + dx_bytes]


def _group_norm(func, args, kwargs, out, size) -> list[int]:
    """native_group_norm(input, weight, bias, N, C, HxW, group, eps) -> (y, mean, rstd)."""
    small = sum(tensor_bytes(t, size) for t in _tensors(args[1:3]))
    outs = _tensors(out)
    return _two_pass(args[0], outs[0], small, sum(tensor_bytes(t, size) for t in outs[1:]), size)


def _group_norm_backward(func, args, kwargs, out, size) -> list[int]:
    """native_group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group,
    output_mask) -> (dx, dweight, dbias)."""
    return _two_pass_backward(args, kwargs, out, _tensors(args[2:5]), size)


def _convolution(func, args, kwargs, out, size) -> list[int]:
    """convolution(input, weight, bias, ...): the convolution, then the bias add."""
    x, w, b = args[0], args[1], args[2]
    y = _tensors(out)[0]
    conv = tensor_bytes(x, size) + tensor_bytes(w, size) + tensor_bytes(y, size)
    if b is None:
        return [conv]
    return [conv, 2 * tensor_bytes(y, size) + tensor_bytes(b, size)]


def _convolution_backward(func, args, kwargs, out, size) -> list[int]:
    """convolution_backward(grad_output, input, weight, bias_sizes, ..., output_mask):
    one kernel per gradient asked for."""
    dy, x, w = args[0], args[1], args[2]
    mask = args[10] if len(args) > 10 else kwargs["output_mask"]
    dx, dw, db = (out[i] if mask[i] else None for i in range(3))
    kernels = []
    if dx is not None:
        kernels.append(tensor_bytes(dy, size) + tensor_bytes(w, size) + tensor_bytes(dx, size))
    if dw is not None:
        kernels.append(tensor_bytes(dy, size) + tensor_bytes(x, size) + tensor_bytes(dw, size))
    if db is not None:
        kernels.append(tensor_bytes(dy, size) + tensor_bytes(db, size))
    return kernels


def _max_pool_backward(func, args, kwargs, out, size) -> list[int]:
    """max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding,
    dilation, ceil_mode, indices)."""
    dy, indices = args[0], args[7] if len(args) > 7 else kwargs["indices"]
    return [tensor_bytes(dy, size) + tensor_bytes(indices, size) + tensor_bytes(out, size)]


def _scatter_add(func, args, kwargs, out, size) -> list[int]:
    """scatter_add(self, dim, index, src) and its in-place form."""
    target, index = args[0], args[2]
    src = args[3] if len(args) > 3 else kwargs["src"]
    scatter = tensor_bytes(index, size) + 2 * tensor_bytes(src, size)  # read src, write as many
    if _name(func).endswith("_"):
        return [scatter]
    return [2 * tensor_bytes(target, size), scatter]


_RULES: dict[str, Callable] = {
    **dict.fromkeys(
        (
            "native_batch_norm",
            "_native_batch_norm_legit",
            "_native_batch_norm_legit_functional",
            "_native_batch_norm_legit_no_training",
            "cudnn_batch_norm",
            "miopen_batch_norm",
        ),
        _batch_norm,
    ),
    **dict.fromkeys(
        ("native_batch_norm_backward", "cudnn_batch_norm_backward", "miopen_batch_norm_backward"),
        _batch_norm_backward,
    ),
    "native_group_norm": _group_norm,
    "native_group_norm_backward": _group_norm_backward,
    "convolution": _convolution,
    "convolution_backward": _convolution_backward,
    "max_pool2d_with_indices_backward": _max_pool_backward,
    "scatter_add": _scatter_add,
    "scatter_add_": _scatter_add,
}


def op_kernels(func, args, kwargs, out, size: Callable[[object], int] = int) -> list[int]:
    """Bytes each GPU kernel behind one ATen operator call moves, by the rules above.

    Args:
        func: the OpOverload (``torch.ops.aten.convolution.default``).
        args, kwargs: its arguments as called (tensors real, fake or meta).
        out: what it returned.
        size: turns a (symbolic) size into an int.

    Returns:
        One entry per kernel (bytes, read + written); empty for views, metadata and
        allocations.
    """
    if is_free(func):
        return []
    rule = _RULES.get(_name(func)) if func.namespace == "aten" else None
    return (rule or _default)(func, args, kwargs or {}, out, size)
