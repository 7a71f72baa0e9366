import torch

from autoseg.models import build_model
from model_plans import make_plan


def test_follows_the_plans_anisotropic_strides_and_features():
    p = make_plan(patch=(8, 32, 32), features=(4, 8, 16, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)))
    net = build_model("attention_unet", p, 2, 3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].in_channels == 2 and any(m.stride == (1, 2, 2) for m in convs)
    assert net.train()(torch.randn(2, 2, 8, 32, 32)).shape == (2, 3, 8, 32, 32)
