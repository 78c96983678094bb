"""Numerical validation of the Triton convolutions on a model's own layer configurations.

``collect_conv_configs`` records, with forward hooks, every distinct configuration of a
model's 3x3 convolutions that the kernels support (input shape, weight shape, stride,
padding, dilation, groups, bias, dtype, memory format). ``validate_configs`` runs each
forward and backward on random inputs through the Triton kernels and through PyTorch's
convolution in the same dtype, both against a float64 PyTorch reference, and judges:

* float32 / float64: norm-wise relative error below 1e-5 / 1e-12 for the output and
  every gradient;
* float16 / bfloat16: our error at most 3x PyTorch's own error in that dtype on the same
  inputs, or below 4 units of roundoff, whichever is larger (weight gradients sum over
  N*H*W terms, so element-wise bounds would be wrong).

``python -m fastcifar.validate --model NAME`` (the command, in the layer above) does this
for a fastcifar model and prints ``format_table``'s table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.kernels.conv import check_supported, conv2d

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
PARTS = ("out", "grad_in", "grad_w", "grad_b")


@dataclass(frozen=True)
class ConvConfig:
    """One convolution configuration as a layer of a model meets it.

    Attributes:
        input_shape: the input's (N, CIN, H, W).
        weight_shape: the weight's (COUT, CIN / groups, KH, KW).
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        groups: the convolution's groups.
        bias: the layer has a bias.
        dtype: the compute dtype (under autocast, the autocast dtype).
        channels_last: the input is channels_last.
    """

    input_shape: tuple[int, int, int, int]  # (N, CIN, H, W)
    weight_shape: tuple[int, int, int, int]  # (COUT, CIN / groups, K, K)
    stride: int
    padding: int
    dilation: int
    groups: int
    bias: bool
    dtype: torch.dtype
    channels_last: bool

    def describe(self) -> str:
        """One line for tables and cache keys, e.g. ``dense 64->128 16x16 s1 p1 d1 bfloat16 cl``.

        Returns:
            The line.
        """
        n, cin, h, w = self.input_shape
        kind = (
            "dense"
            if self.groups == 1
            else (
                "depthwise"
                if self.groups == cin == self.weight_shape[0]
                else f"groups={self.groups}"
            )
        )
        layout = "cl" if self.channels_last else "nchw"
        k = self.weight_shape[-1]
        kind = kind if k == 3 else f"{kind} {k}x{k}"
        return (
            f"{kind} {cin}->{self.weight_shape[0]} {h}x{w} s{self.stride} p{self.padding} "
            f"d{self.dilation} {str(self.dtype).replace('torch.', '')} {layout}"
        )


@dataclass
class ValidationResult:
    """One configuration's check: the Triton kernels' and PyTorch's errors against a float64
    reference, and the verdict.

    Attributes:
        config: the configuration checked.
        layers: the model's layers that have it.
        errors: norm-wise relative error of the Triton kernels per part of ``PARTS``
            (``"out"``, ``"grad_in"``, ``"grad_w"``, ``"grad_b"``).
        torch_errors: PyTorch's own, same keys, same inputs.
        bounds: the bound each error was held to (``error_bound``).
        passed: every error within its bound.
        message: the first failure in one line, or an empty string.
    """

    config: ConvConfig
    layers: list[str]
    errors: dict[str, float] = field(default_factory=dict)  # ours, vs float64
    torch_errors: dict[str, float] = field(default_factory=dict)  # PyTorch's, same dtype
    bounds: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    message: str = ""


def collect_conv_configs(
    model: nn.Module, example: torch.Tensor, dtype: torch.dtype | None = None
) -> dict[ConvConfig, list[str]]:
    """{configuration: [layer names]} for the supported 3x3 ``nn.Conv2d`` layers of ``model``
    (``fastcifar.nn.Conv2d`` included), seen in one forward pass of ``example``.

    ``dtype`` is the compute dtype to record (default: the input's).

    Args:
        model: any ``nn.Module``; its parameters' device is used.
        example: an input batch (N, 3, H, W) for one forward pass.
        dtype: the compute dtype to record, or None for the input's.

    Returns:
        Each distinct ``ConvConfig`` with the names of the layers that have it, in the order
        met.
    """
    found: dict[ConvConfig, list[str]] = {}
    hooks = []

    def hook(name):
        def fn(module, args, _output):
            x = args[0]
            cfg = ConvConfig(
                tuple(x.shape),
                tuple(module.weight.shape),
                module.stride[0],
                module.padding[0],
                module.dilation[0],
                module.groups,
                module.bias is not None,
                dtype or x.dtype,
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
            )
            try:
                check_supported(
                    cfg.input_shape,
                    cfg.weight_shape,
                    cfg.dtype,
                    "cuda",
                    cfg.stride,
                    cfg.padding,
                    cfg.dilation,
                    cfg.groups,
                )
            except (NotImplementedError, ValueError):
                return
            found.setdefault(cfg, []).append(name)

        return fn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return found


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error of ``a`` against ``ref`` (computed in float64).

    Args:
        a: the result to judge, any dtype.
        ref: the reference, same shape (float64).

    Returns:
        ``||a - ref|| / ||ref||`` (Frobenius norms), a Python float.
    """
    ref = ref.double()
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def error_bound(dtype: torch.dtype, torch_error: float) -> float:
    """The largest relative error accepted from our kernels in ``dtype`` (module
    docstring): a fixed tolerance in float32/float64; in 16-bit 3x PyTorch's own error
    ``torch_error`` on the same inputs, or 4 units of roundoff, whichever is larger.

    Args:
        dtype: the compute dtype.
        torch_error: PyTorch's relative error on the same inputs.

    Returns:
        The bound, a relative error.
    """
    if dtype in TOLERANCE:
        return TOLERANCE[dtype]
    return max(3 * torch_error, 4 * UNIT_ROUNDOFF[dtype])


def _forward_backward(fn, x, w, b, cfg: ConvConfig, gy=None):
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    bias = leaves[2] if b is not None else None
    y = fn(leaves[0], leaves[1], bias, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    if gy is None:
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return [y, *grads], gy


def validate_config(cfg: ConvConfig, device: torch.device, seed: int = 0) -> ValidationResult:
    """Run one configuration through Triton, PyTorch (same dtype) and a float64 reference.

    Args:
        cfg: the configuration.
        device: where to run both sides (CUDA, or the CPU under the interpreter).
        seed: the random inputs' seed.

    Returns:
        The ``ValidationResult`` (its ``layers`` empty).
    """
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(cfg.input_shape, generator=gen).to(device, cfg.dtype)
    x = x.contiguous(memory_format=fmt)
    fan_in = cfg.weight_shape[1] * 9
    w = (torch.randn(cfg.weight_shape, generator=gen) / fan_in**0.5).to(device, cfg.dtype)
    b = torch.randn(cfg.weight_shape[0], generator=gen).to(device, cfg.dtype) if cfg.bias else None
    result = ValidationResult(cfg, [])
    try:
        ours, gy = _forward_backward(conv2d, x, w, b, cfg)
    except Exception as exc:  # reported in the table, never hidden
        result.message = f"{type(exc).__name__}: {exc}"
        return result
    up = [t.double() if t is not None else None for t in (x, w, b)]
    ref, _ = _forward_backward(F.conv2d, *up, cfg, gy.double())
    theirs, _ = _forward_backward(F.conv2d, x, w, b, cfg, gy)
    result.passed = True
    for part, a, r, t in zip(PARTS, ours, ref, theirs, strict=False):
        err, terr = relative_error(a, r), relative_error(t, r)
        bound = error_bound(cfg.dtype, terr)
        result.errors[part], result.torch_errors[part], result.bounds[part] = err, terr, bound
        if not err <= bound:  # also catches NaN
            result.passed = False
            result.message = f"{part} relative error {err:.2e} > bound {bound:.2e}"
    return result


def validate_configs(configs: dict[ConvConfig, list[str]], device) -> list[ValidationResult]:
    """``validate_config`` for each configuration, with the layers that have it.

    Args:
        configs: ``collect_conv_configs``' result.
        device: where to run both sides.

    Returns:
        One ``ValidationResult`` per configuration, in order.
    """
    results = []
    for cfg, layers in configs.items():
        r = validate_config(cfg, torch.device(device))
        r.layers = layers
        results.append(r)
    return results


def format_table(results: list[ValidationResult]) -> str:
    """A plain-text table: layers, configuration, relative errors (ours / PyTorch's), verdict.

    Args:
        results: ``validate_configs``' results.

    Returns:
        The table, one line a configuration after a header line.
    """
    head = f"{'layer':<24} {'configuration':<44} " + " ".join(f"{p:>17}" for p in PARTS)
    lines = [head, "-" * len(head)]
    for r in results:
        layer = r.layers[0] + (f" (+{len(r.layers) - 1})" if len(r.layers) > 1 else "")
        cells = []
        for p in PARTS:
            if p in r.errors:
                cells.append(f"{r.errors[p]:.1e}/{r.torch_errors[p]:.1e}".rjust(17))
            else:
                cells.append("-".rjust(17))
        verdict = "pass" if r.passed else f"FAIL {r.message}"
        lines.append(f"{layer[:24]:<24} {r.config.describe()[:44]:<44} {' '.join(cells)} {verdict}")
    lines.append(
        "errors: norm-wise relative to a float64 reference, Triton/PyTorch in the same dtype"
    )
    return "\n".join(lines)
