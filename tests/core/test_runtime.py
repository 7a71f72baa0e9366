import copy

import torch

from autoseg.core import runtime
from autoseg.core.runtime import guard_tiny_convolutions


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 4, 3, padding=1))


def _grads(net, x, amp: bool):
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(x)
    out.float().square().sum().backward()
    return out.dtype, [p.grad.clone() for p in net.parameters()]


def test_two_voxel_deep_convolutions_run_in_fp32_under_cpu_autocast():
    net = guard_tiny_convolutions(_net())
    tiny = torch.randn(2, 8, 2, 3, 2)
    dtype, bf16_grads = _grads(net, tiny, amp=True)
    assert dtype == torch.float32  # computed in fp32: PyTorch's bf16 gradients of such layers are wrong
    _, fp32_grads = _grads(net, tiny, amp=False)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(bf16_grads, fp32_grads))
    assert _grads(net, torch.randn(2, 8, 4, 4, 4), amp=True)[0] == torch.bfloat16  # larger inputs: autocast as usual


def test_guard_keeps_weights_and_survives_a_deep_copy():
    plain, guarded = _net(), guard_tiny_convolutions(_net())
    assert plain.state_dict().keys() == guarded.state_dict().keys()
    x = torch.randn(1, 8, 5, 4, 3)
    assert torch.equal(plain(x), guarded(x))
    clone = copy.deepcopy(guarded)
    conv = clone[0]
    assert conv.forward.__self__ is conv and conv.forward.__func__ is runtime._conv3d_forward_guarded
