"""Receptive-field arithmetic for any model, traced through its real forward pass.

For each convolution or pooling a tensor passes through, with kernel ``k``, stride
``s``, dilation ``d`` and padding ``p`` (the recurrences of Dang Ha The Hien, "A guide
to receptive field arithmetic for Convolutional Neural Networks", 2017; Araujo et al.,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019)::

    k_eff   = d (k - 1) + 1
    r_out   = r_in + (k_eff - 1) j_in        receptive field, input pixels
    j_out   = j_in s                         jump: input pixels between adjacent outputs
    n_out   = floor((n_in + 2 p - k_eff) / s) + 1

Every torch function is intercepted (a ``TorchFunctionMode``), so functional pooling,
skip connections and additions count: an elementwise op with several inputs takes the
largest receptive field among them (the receptive field of a sum is the union of its
branches'), and reshapes, splits and channel shuffles pass the field along. Global and
adaptive pooling grow the field by the whole feature map; a per-channel gate computed
from such a pooling and broadcast back over a feature map (squeeze-excitation) adds no
spatial field to it.

Checked against the seeds' hand calculations: ``s7`` reaches 61 (the seed README's
value) and ``c1c2c3c40`` 59 with its final 4x4 average pool (the seed's table), where the
field is counted in input pixels and may exceed the 32-pixel image: it is the theoretical
field, padding included, as the seeds count it.

Why not torchscan (0.2.0, read for this): its ``summary(..., receptive_field=True)``
gives each module's own receptive field, stride and padding from module hooks, so
functional pooling (``F.max_pool2d`` in the seeds' forward methods) is invisible to it and
the composition across layers, through a residual shortcut, is not traced; the
per-layer formula is the same (``k_eff = d (k - 1) + 1``). The layer summary itself comes
from torchinfo (``fastcifar.summary``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class RFRow:
    """One convolution or pooling on the path of the input.

    Attributes:
        layer: the qualified module name (or the function, for functional ops).
        op: ``conv2d``, ``avg_pool2d``, ``max_pool2d`` or ``adaptive_pool``.
        kernel: its kernel's side, in pixels.
        stride: its stride.
        dilation: its tap spacing.
        padding: its padding, in pixels.
        jump_in: input pixels between neighbouring positions of this layer's input.
        receptive_field: the receptive field after this layer, in input pixels.
        output_size: the side of its output, in pixels.
    """

    layer: str
    op: str
    kernel: int
    stride: int
    dilation: int
    padding: int
    jump_in: int
    receptive_field: int
    output_size: int


def _int(v) -> int:
    if isinstance(v, list | tuple):
        return int(v[0])
    return int(v)


class _Tracer(TorchFunctionMode):
    def __init__(self, names: list[str]):
        super().__init__()
        self.info: dict[int, tuple[int, int]] = {}  # id(tensor) -> (receptive field, jump)
        self.keep: list[torch.Tensor] = []  # keep traced tensors alive: ids stay unique
        self.rows: list[RFRow] = []
        self.names = names

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        traced = [t for t in flat if isinstance(t, torch.Tensor) and id(t) in self.info]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not traced or not outputs:
            return out
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            # a reshape, a split, a 5-D view (a channel shuffle): the field goes along
            for t in outputs:
                self.info[id(t)] = max(self.info[id(i)] for i in traced)
                self.keep.append(t)
            return out
        # a per-channel gate broadcast over a feature map (squeeze-excitation) carries no
        # spatial field: only inputs with a spatial extent count where the output has one
        spatial = [t for t in traced if t.dim() == 4 and t.shape[-1] > 1]
        if out.shape[-1] > 1 and spatial:
            traced = spatial
        rf, jump = max(self.info[id(t)] for t in traced)
        name = getattr(func, "__name__", str(func))
        layer = self.names[-1] if self.names else name
        x = flat[0] if isinstance(flat[0], torch.Tensor) else None
        spec = None
        if name == "conv2d":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            get = lambda i, key, default: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
            spec = (
                "conv2d",
                weight.shape[-1],
                _int(get(3, "stride", 1)),
                _int(get(5, "dilation", 1)),
                _int(get(4, "padding", 0)),
            )
        elif name in ("avg_pool2d", "max_pool2d"):
            k = _int(args[1] if len(args) > 1 else kwargs["kernel_size"])
            s = args[2] if len(args) > 2 else kwargs.get("stride")
            s = k if s is None or (isinstance(s, list | tuple) and not s) else _int(s)
            p = _int(args[3] if len(args) > 3 else kwargs.get("padding", 0))
            d = _int(args[4] if len(args) > 4 and name == "max_pool2d" else 1)
            spec = (name, k, s, d, p)
        elif name.startswith("adaptive_") and x is not None:
            k = x.shape[-1] // out.shape[-1]
            spec = ("adaptive_pool", k, k, 1, 0)
        if spec is not None:
            op, k, s, d, p = spec
            k_eff = d * (k - 1) + 1
            new_rf = rf + (k_eff - 1) * jump
            self.rows.append(RFRow(layer, op, k, s, d, p, jump, new_rf, out.shape[-1]))
            rf, jump = new_rf, jump * s
        self.info[id(out)] = (rf, jump)
        self.keep.append(out)
        return out


def receptive_field_table(model: nn.Module, input_size: int = 32) -> list[RFRow]:
    """Trace ``model`` on one (1, 3, input_size, input_size) image; one row per convolution
    or pooling in execution order. The model's training mode is restored afterwards.

    Args:
        model: any model taking (N, 3, H, W) images.
        input_size: the image side, in pixels.

    Returns:
        The rows, in execution order.
    """
    names: list[str] = []
    hooks = []

    def enter(name):
        return lambda module, args: names.append(name)

    def leave(module, args, output):
        names.pop()  # returns None: the output is left alone

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_pre_hook(enter(name)))
            hooks.append(module.register_forward_hook(leave))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    tracer = _Tracer(names)
    tracer.info[id(x)] = (1, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return tracer.rows


def format_rf_table(rows: list[RFRow]) -> str:
    """The rows as a plain-text table: layer, op, kernel, stride, dilation, padding, jump, receptive
    field and output size.

    Args:
        rows: ``receptive_field_table``'s rows.

    Returns:
        The table, one line a row after a header line.
    """
    head = (
        f"{'layer':<22} {'op':<13} {'kernel':>6} {'stride':>6} {'dilation':>8} "
        f"{'padding':>7} {'jump':>5} {'RF':>5} {'out':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.layer[:22]:<22} {r.op:<13} {r.kernel:>6} {r.stride:>6} {r.dilation:>8} "
            f"{r.padding:>7} {r.jump_in:>5} {r.receptive_field:>5} {r.output_size:>5}"
        )
    return "\n".join(lines)
