"""Count the convolution output elements of a forward pass (what nnU-Net's memory estimate counts)."""

import torch

CONVS = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def conv_output_elements(net: torch.nn.Module, x: torch.Tensor) -> int:
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(o.numel())) for m in net.modules()
             if isinstance(m, CONVS)]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(counts)
