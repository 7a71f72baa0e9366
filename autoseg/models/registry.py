"""Network registry: architecture name -> its :class:`~autoseg.models.architecture.Architecture` entry.

Each architecture is one module of this package stating its planning rules, deep supervision, head
names and builder; this registry lists them explicitly (adding one: write the module, add it to
:data:`ENTRIES`, add its preset to ``planners/``). Importing the registry imports no torch.
"""

from __future__ import annotations

from autoseg.models import (attention_unet, mednext, nnunet, resenc_unet, segresnet, swin_unetr, unet, unet_plusplus,
                            unetr)
from autoseg.models.architecture import Architecture, ModelError
from autoseg.planning.plans import ConfigurationPlan
from autoseg.planning.trainable import configuration_problems

ENTRIES = (unet, resenc_unet, swin_unetr, segresnet, attention_unet, unet_plusplus, mednext, unetr)

ARCHITECTURES: dict[str, Architecture] = {m.ARCHITECTURE.name: m.ARCHITECTURE for m in ENTRIES}
# Networks of imported models (`autoseg import`): built for prediction, never planned or trained.
IMPORTED: dict[str, Architecture] = {nnunet.ARCHITECTURE.name: nnunet.ARCHITECTURE}


def get_architecture(name: str) -> Architecture:
    """The entry named ``name`` (also an imported model's, :data:`IMPORTED`); an unknown name lists the
    choices."""
    if name in IMPORTED:
        return IMPORTED[name]
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{name}'; choices: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(name: str, plan: ConfigurationPlan, in_channels: int, out_channels: int,
                deep_supervision: bool = True):
    """The ``torch.nn.Module`` of architecture ``name`` for ``plan`` (see :mod:`autoseg.models.architecture`
    for what it returns)."""
    return get_architecture(name).build(plan, in_channels, out_channels, deep_supervision)


def check_buildable(name: str, plan: ConfigurationPlan) -> None:
    """Raise :class:`ModelError` when ``plan`` cannot be built as architecture ``name`` and trained
    (:func:`~autoseg.planning.trainable.configuration_problems` with the entry's own rule); builds
    nothing, so a caller can check before it makes a run folder."""
    problems = configuration_problems(plan, get_architecture(name))
    if problems:
        raise ModelError(f"configuration '{plan.name}' cannot be built as {name}: {'; '.join(problems)}; rerun "
                         "`autoseg plan` (it plans only configurations that can be built) or choose another --arch")
