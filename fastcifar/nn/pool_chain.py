"""The speed run's blocks as chains (layer 2): a flat ``nn.Sequential(conv3x3,
MaxPool2d(2), BN, act, conv3x3, BN, act)`` (``fastcifar.models.speedrun``'s ``_block``,
and any model written the same way) runs as two kernels a direction:

* the first convolution with its max pool in the epilogue (``conv2d_pool_stats``): it
  writes only the pooled output, its BatchNorm statistics and 2 bits a channel of window
  positions; its gradient kernels un-pool as they load;
* the second convolution applies the first BatchNorm and activation as it loads the
  pooled output (``conv2d_prologue_stats``) and takes the second BatchNorm's statistics
  in its epilogue; the block hands a ``Pending`` (raw output, folded BatchNorm,
  activation) to the next block where the model's ``CHAIN`` says one follows (the next
  block's first convolution applies it as it loads), else the activated tensor.

So a block's pre-pool output, its gradient and its normalised, activated tensors are never
written. The BatchNorms may be ``nn.BatchNorm2d`` or a subclass that keeps its forward
(the speed run's ``FrozenScaleBatchNorm``); activations those of ``chain.activation_name``
(ReLU, ReLU6, SiLU, the exact GELU of the record's blocks). Children, parameters,
buffers and state-dict keys stay as they are; eval mode uses the running statistics.
"""

from __future__ import annotations

from torch import nn

from fastcifar.kernels.conv_bn import conv2d_prologue_stats
from fastcifar.kernels.conv_pool import conv2d_pool_stats
from fastcifar.nn.chain import Pending, activation_name
from fastcifar.nn.modules import (
    autocast_args,
    bn_prologue,
    config_supported,
    plain_bn,
    plain_conv,
)
from fastcifar.nn.pending import global_max

__all__ = [
    "PooledBlock",
    "find_pooled_blocks",
    "fuse_pooled_blocks",
    "is_pooled_block",
    "revert_pooled_block",
]


def _dense_3x3(m: nn.Module) -> bool:
    # what both kernels take: a plain stride-1 3x3 dense convolution the kernels support
    return (
        plain_conv(m)
        and m.kernel_size == (3, 3)
        and m.stride == (1, 1)
        and m.groups == 1
        and config_supported(m)
    )


def is_pooled_block(m: nn.Module) -> bool:
    """Whether ``m`` is ``Sequential(conv3x3, MaxPool2d(2), BN, act, conv3x3, BN, act)``
    (or its converted ``PooledBlock``) that the kernels take: stride-1 dense 3x3
    convolutions, a 2x2 stride-2 max pool without padding, dilation or ceil mode,
    BatchNorms as ``plain_bn``, activations of ``ACTIVATION_NAMES``.

    Args:
        m: any module.

    Returns:
        True for such a block.
    """
    if type(m) not in (nn.Sequential, PooledBlock) or len(m) != 7:
        return False
    conv1, pool, bn1, act1, conv2, bn2, act2 = m
    pool_ok = (
        type(pool) is nn.MaxPool2d
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
        and not pool.return_indices
    )
    return (
        pool_ok
        and _dense_3x3(conv1)
        and _dense_3x3(conv2)
        and conv2.in_channels == conv1.out_channels
        and plain_bn(bn1, conv1.out_channels)
        and plain_bn(bn2, conv2.out_channels)
        and activation_name(act1) is not None
        and activation_name(act2) is not None
    )


def find_pooled_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: block} of every ``is_pooled_block`` module of ``model``.

    Args:
        model: any model.

    Returns:
        {qualified name: block}, in module order.
    """
    return {name: m for name, m in model.named_modules() if is_pooled_block(m)}


class PooledBlock(nn.Sequential):
    """A converted ``Sequential(conv3x3, MaxPool2d(2), BN, act, conv3x3, BN, act)``: see
    the module docstring.

    Input (N, CIN, H, W) NCHW or channels_last, or a ``Pending`` from the block before;
    output (N, COUT, (H - 2 + 2 * padding) // 2 ...) as the unconverted block's (the
    convolutions' own padding), or a ``Pending`` when ``gives_pending``. Training and eval
    as PyTorch's modules (batch statistics and running-statistics updates, then the
    running ones in eval).
    """

    gives_pending = False

    def forward(self, x):
        """The block through the pooled kernels.

        Args:
            x: (N, CIN, H, W), or a ``Pending`` handed on by the block before.

        Returns:
            (N, COUT, H / 2, W / 2): a ``Pending`` when the next module takes one, else the tensor.
        """
        conv1, _, bn1, act1, conv2, bn2, act2 = self
        prologue, activation = None, "identity"
        if isinstance(x, Pending):  # the previous block's BatchNorm and activation
            x, prologue, activation = x.raw, x.prologue, x.activation
        x, w1, b1 = autocast_args(x, conv1.weight, conv1.bias)
        args1 = (conv1.stride[0], conv1.padding[0], conv1.dilation[0], 1)
        y, mean, var = conv2d_pool_stats(x, w1, b1, prologue, activation, *args1)
        folded = _fold(bn1, y, mean, var)
        y, w2, b2 = autocast_args(y, conv2.weight, conv2.bias)
        args2 = (conv2.stride[0], conv2.padding[0], conv2.dilation[0], 1)
        z, mean, var = conv2d_prologue_stats(y, w2, b2, folded, activation_name(act1), *args2)
        out = Pending(z, _fold(bn2, z, mean, var), activation_name(act2))
        return out if self.gives_pending else out.materialise()


def _fold(bn: nn.BatchNorm2d, y, mean, var):
    # the BatchNorm as a (C, 3) prologue (bn_prologue takes the running statistics in eval)
    return bn_prologue(bn, mean, var, y.numel() // y.shape[1])


def _max_rule(m: nn.Module) -> str | None:
    """How ``m`` pools a whole map when it does: "amax" for a module declaring
    ``GLOBAL_MAX = True`` (its forward is ``x.amax((2, 3), keepdim=True)``: the speed run's
    ``GlobalMaxPool``), "first" for ``nn.MaxPool2d(3)`` (stride 3, no padding, dilation or
    ceil mode: global on the 3x3 map a 32 px speed run leaves); else None."""
    cls = m.__dict__.get("_unfused_class", type(m))  # a converted pool: its own class
    if getattr(cls, "GLOBAL_MAX", False):
        return "amax"
    if cls is nn.MaxPool2d and not (m.ceil_mode or m.return_indices):
        k, s = m.kernel_size, m.stride
        if k in (3, (3, 3)) and s in (3, (3, 3)) and m.padding in (0, (0, 0)):
            return "first" if m.dilation in (1, (1, 1)) else None
    return None


class _PendingMax:
    """Mixed into a global max pool's class by ``fuse_pooled_blocks``: given a
    ``Pending`` whose map it pools whole, it reads the raw tensor through the prologue
    (``pending.global_max``: the activated tensor is neither written nor saved); anything
    else takes the pool's own forward (a ``Pending`` materialised first)."""

    def forward(self, x):
        if not isinstance(x, Pending):
            return super().forward(x)
        rule = _max_rule(self)
        if rule == "first" and tuple(x.raw.shape[2:]) != (3, 3):
            return super().forward(x.materialise())  # not the whole map: a window pool
        return global_max(x, first_only=rule == "first")


_PENDING_MAX_CLASSES: dict[type, type] = {}


def _take_pending(pool: nn.Module) -> None:
    # the pool's class with _PendingMax's forward, one class per pool class
    cls = pool.__dict__.setdefault("_unfused_class", type(pool))
    if cls not in _PENDING_MAX_CLASSES:
        _PENDING_MAX_CLASSES[cls] = type(f"Chained{cls.__name__}", (_PendingMax, cls), {})
    pool.__class__ = _PENDING_MAX_CLASSES[cls]


def fuse_pooled_blocks(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Convert every ``is_pooled_block`` of ``model`` (or those named in ``only``) in
    place to ``PooledBlock``; where a module's ``CHAIN`` (names of its children in the
    order its forward calls them, each taking the previous one's output alone) puts a
    converted block right before another, or before a global max pool (``_max_rule``), the
    first hands the second a ``Pending``. Returns the names converted.

    Args:
        model: the model, converted in place.
        only: qualified names to convert, or None for all.

    Returns:
        The qualified names converted.
    """
    names = [n for n in find_pooled_blocks(model) if only is None or n in only]
    for name in names:
        model.get_submodule(name).__class__ = PooledBlock
    for parent_name, parent in model.named_modules():
        chain = getattr(type(parent), "CHAIN", ())
        prefix = f"{parent_name}." if parent_name else ""
        for a, b in zip(chain, chain[1:], strict=False):
            second = getattr(parent, b)
            head = _max_rule(second) is not None and not isinstance(second, _PendingMax)
            if f"{prefix}{a}" in names and (f"{prefix}{b}" in names or head):
                first = getattr(parent, a)
                if head:
                    _take_pending(second)
                first.gives_pending = True
                first.__dict__["_link_consumer"] = second
                second.__dict__["_link_producer"] = first
    return names


def revert_pooled_block(m: nn.Module) -> None:
    """Put a ``PooledBlock`` back on PyTorch (``nn.Sequential``), and the blocks or the
    global max pool linked to it with it (a module handed a ``Pending`` cannot run alone
    on PyTorch).

    Args:
        m: a ``PooledBlock``, reverted in place.
    """
    if type(m) is not PooledBlock and not isinstance(m, _PendingMax):
        return
    partners = [m.__dict__.pop(k, None) for k in ("_link_consumer", "_link_producer")]
    m.__class__ = m.__dict__.pop("_unfused_class", nn.Sequential)
    m.__dict__.pop("gives_pending", None)
    for partner in partners:
        if partner is not None:
            revert_pooled_block(partner)
