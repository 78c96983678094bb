"""The compile paths lowered for a fake CUDA device, CUDA's autocast policy, the CPU
control, the max-pool backward's decomposition, the kinds' one vocabulary and the torch
versions the lowering is pinned to (``fake_cuda.py``, ``autocast.py``, ``inductor.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastcifar.errors import FastCifarError
from fastcifar.roofline import fake_cuda as fake_cuda_module
from fastcifar.roofline.count import count_step
from fastcifar.roofline.fake_cuda import check_torch, fake_cuda, fake_cuda_tensor
from fastcifar.roofline.gpus import GPUS, get_gpu
from fastcifar.roofline.ledger import StepSetup
from tests.conftest import run_train
from tests.roofline.test_roofline import _setup as step_setup

TORCH_2_14 = torch.__version__.startswith("2.14")


def _setup(model: nn.Module, amp=torch.bfloat16, batch=4) -> StepSetup:
    """test_roofline's step (a mean loss, plain SGD), in bfloat16 unless told."""
    return step_setup(model, amp=amp, batch=batch)


def _block() -> nn.Module:
    """conv -> BN -> ReLU -> max-pool -> conv -> GroupNorm -> GELU: every case at once."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.GroupNorm(4, 16),
        nn.GELU(),
    )


def test_fake_cuda_answers_from_the_profile_and_leaves_nothing_behind():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._triton import has_triton

    before = (torch.cuda.is_available(), has_triton())
    mode = FakeTensorMode()
    x = torch.empty(4, 8, 16, 16).to(memory_format=torch.channels_last)
    w = torch.empty(16, 8, 3, 3).to(memory_format=torch.channels_last)
    with fake_cuda(get_gpu("a100")):
        props = torch.cuda.get_device_properties(0)
        assert (props.multi_processor_count, props.major, props.minor) == (108, 8, 0)
        assert torch.cuda.is_available() and has_triton()
        with mode:
            y = torch.conv2d(fake_cuda_tensor(x, mode), fake_cuda_tensor(w, mode), padding=1)
        # cuDNN keeps a channels_last convolution channels_last, as on a GPU
        assert y.device.type == "cuda" and y.is_contiguous(memory_format=torch.channels_last)
    assert (torch.cuda.is_available(), has_triton()) == before


def _raw_layout_is_contiguous() -> bool:
    """Whether this torch's own answer for a fake CUDA bf16 channels_last convolution
    (``_select_conv_backend`` then its memory format) is a contiguous output."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    cl = torch.channels_last
    x = torch.empty(4, 8, 16, 16, dtype=torch.bfloat16).to(memory_format=cl)
    x, w = fake_cuda_tensor(x, mode), fake_cuda_tensor(torch.empty(16, 8, 3, 3).to(x), mode)
    args = (None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, None)
    backend = torch._C._select_conv_backend(x, w, *args)
    return torch._C._conv_determine_backend_memory_format(x, w, backend) != cl


def test_without_cudnns_answer_a_convolution_would_pay_a_layout_copy(monkeypatch):
    torch.manual_seed(0)
    lone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    counts = count_step(_setup(lone, amp=None), ["eager", "compile"])
    assert counts["compile"].bytes == counts["eager"].bytes  # no kernel but the conv's
    torch.manual_seed(0)
    conv_bn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    cudnn = count_step(_setup(conv_bn), ["compile"])["compile"]
    # the fake CUDA convolution's own answer (the slow reference backend) is contiguous:
    # Inductor then copies the bfloat16 output back to channels_last, one kernel more
    monkeypatch.setattr(fake_cuda_module, "_cudnn_conv_backend", lambda select: select)
    slow = count_step(_setup(conv_bn), ["compile"])["compile"]
    assert _raw_layout_is_contiguous()  # on both torches
    if not TORCH_2_14:  # 2.11's Inductor lays the convolution out itself: no copy
        assert slow.bytes == cudnn.bytes
        return
    assert slow.bytes > cudnn.bytes
    assert sum(r.kernels for r in slow.layers) == sum(r.kernels for r in cudnn.layers) + 1


def test_the_compile_paths_are_lowered_for_cuda_and_the_control_reproduces_the_cpu_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cuda = count_step(_setup(_block()), ["eager", "compile"], get_gpu("h100"))
    torch.set_num_threads(2)  # the CPU lowering depends on it; the CUDA one does not
    assert count_step(_setup(_block()), ["compile"], get_gpu("h100"))["compile"].bytes == (
        cuda["compile"].bytes
    )
    assert cuda["compile"].lowered_for == "h100" and cuda["eager"].lowered_for == ""
    try:
        control = count_step(_setup(_block()), ["eager", "compile"], cpu_control=True)
    finally:
        torch.set_num_threads(threads)
    assert control["compile"].lowered_for == "cpu"
    # what the roofline counted before it lowered for CUDA: bccf3f4's count_step (the
    # CPU's autocast, Inductor's CPU lowering at a symbolic batch, scheduled by its Triton
    # backend), run on each torch with 2 threads (its CPU lowering splits loops by them)
    version = ".".join(torch.__version__.split(".")[:2])
    before = {"2.14": (2_475_648, 2_693_120), "2.11": (2_541_184, 2_070_368)}[version]
    assert (control["eager"].bytes, control["compile"].bytes) == before
    assert cuda["compile"].flops == control["compile"].flops == cuda["eager"].flops


def test_cuda_autocast_runs_the_norms_in_float32_where_the_cpus_does_not():
    from fastcifar.roofline.autocast import CudaAutocast

    x = torch.randn(2, 8, 4, 4)
    conv, gn, ln = nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8), nn.LayerNorm(4)
    with CudaAutocast(torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.bfloat16  # a convolution in the low dtype
        assert gn(y).dtype == torch.float32  # CUDA: group_norm, layer_norm, softmax in fp32
        assert ln(y).dtype == torch.float32 and torch.softmax(y, -1).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gn(conv(x)).dtype == torch.bfloat16  # the CPU's policy leaves it low
    # the fp32 GroupNorm's output and its cast back cost bytes the CPU's policy omits
    cuda = count_step(_setup(_block()), ["eager"])["eager"]
    cpu = count_step(_setup(_block()), ["eager"], cpu_control=True)["eager"]
    norm = {r.name: r.bytes for r in cuda.layers}, {r.name: r.bytes for r in cpu.layers}
    assert norm[0]["5"] > norm[1]["5"]


def test_the_compile_path_carries_cudas_autocast_casts():
    from fastcifar.roofline.autocast import cast_graph

    captured = []

    def capture(gm, example_inputs):  # Dynamo's graph, as the compile paths get it
        captured.append((gm, example_inputs))
        return gm

    torch._dynamo.reset()
    torch.compile(_block(), backend=capture, fullgraph=True)(torch.randn(2, 3, 8, 8))
    torch._dynamo.reset()
    ((gm, inputs),) = captured
    # the first conv's input and weight to bfloat16, the second's weight (its input is
    # the first's bfloat16 output, through BatchNorm, ReLU and the pool), the group
    # norm's input to float32
    assert cast_graph(gm, inputs, torch.bfloat16) == 4
    norm = next(n for n in gm.graph.nodes if "group_norm" in str(n.target))
    cast = norm.args[0]
    assert cast.target == "to" and cast.args[1] == torch.float32


@pytest.mark.skipif(not TORCH_2_14, reason="torch 2.14's Inductor decomposes it")
def test_the_max_pool_backward_decomposition_is_counted_with_and_without():
    setup = _setup(_block())
    decomposed = count_step(setup, ["compile"])["compile"]
    kernel = count_step(setup, ["compile"], maxpool_decomposition=False)["compile"]
    pool = {r.name: r.bytes for r in decomposed.layers if r.kind == "pooling"}
    assert kernel.bytes < decomposed.bytes  # the zero-filled float32 gradient it writes
    assert {r.name for r in kernel.layers if r.kind == "pooling"} == set(pool)


def test_one_kind_vocabulary_across_the_paths():
    torch.manual_seed(0)
    chain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
    )
    counts = count_step(_setup(chain, batch=8), ["eager", "compile", "fastcifar"])
    kinds = {p: {r.kind for r in c.layers} for p, c in counts.items()}
    assert {"batchnorm", "activation"} <= kinds["eager"]  # separate kernels
    assert "batchnorm+act" in kinds["compile"] and "batchnorm+act" in kinds["fastcifar"]
    assert all("other" not in k for k in kinds.values()), kinds


def test_an_untested_torch_or_a_gpu_without_cuda_is_one_line(tmp_path):
    with pytest.raises(FastCifarError, match=r"tested on torch 2\.11 and 2\.14, not 2\.9\.1"):
        check_torch("2.9.1")
    check_torch("2.11.0+cu130")
    assert GPUS["mi300x"].cuda is None and get_gpu("h100").target == "sm_90"
    with pytest.raises(FastCifarError, match="not a CUDA GPU"):
        count_step(_setup(_block()), ["compile"], get_gpu("mi300x"))
    args = ["--recipe", "s7", "--paths", "compile", "--gpu", "mi300x", "--out", str(tmp_path)]
    r = run_train(*args, module="fastcifar.roofline.__main__")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a CUDA GPU" in r.stderr and "--paths eager" in r.stderr
