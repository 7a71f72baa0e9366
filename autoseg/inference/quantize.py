"""int8 networks for CPU prediction: post-training quantization (NNCF) of each fold, checked against fp32.

``autoseg quantize`` (``pip install -e '.[quantize]'`` in the checkout), per fold of a trained model:

1. converts the checkpoint's network to OpenVINO (the f32 model ``predict --backend openvino`` runs);
2. **calibrates** int8 quantization on patches of the fold's *training* cases (preprocessed data of the
   workspace; drawn with a fixed seed, one third containing foreground as in training; NNCF's
   ``MIXED`` preset: symmetric weights, asymmetric activations, fast bias correction);
3. **checks** it against f32 on the fold's *validation* cases (whole preprocessed volumes, sliding
   window, no mirroring): mean Dice per class of both and the share of voxels whose label agrees.
   The int8 network *passes* when no class loses more than ``tolerance`` Dice (default 0.005);
4. saves ``fold_k/<checkpoint>.int8.xml`` / ``.bin`` and ``fold_k/quantization.json`` (the record:
   a digest of the weights it was made from, the calibration, the check's figures).

``predict --precision int8`` runs these networks; ``--precision auto`` on the CPU runs them when
every chosen fold has one that passed its check for the current weights (else OpenVINO f32). A
retrained checkpoint makes the record stale (the digest differs): int8 is then refused until
``autoseg quantize`` runs again. int8 is not exact: on this project's CPU it gave ~1.85x the speed of
f32 with the same Dice (docs/benchmarks.md, Prediction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.core.checkpoint import CHECKPOINTS, weights_digest
from autoseg.evaluation.metrics import case_metrics, evaluation_targets
from autoseg.inference.conversion import (OpenVINONetwork, QuantizeError, convert_to_openvino, int8_name, no_telemetry,
                                          save_ir, save_record)
from autoseg.inference.probabilities import labels_from_probabilities, regions_order
from autoseg.inference.sliding import predict_probabilities
from autoseg.sampling import draw_patch_box, read_patch
from autoseg.storage import open_case

DEFAULT_PATCHES = 64  # calibration patches per fold
DEFAULT_CHECK_CASES = 10  # validation cases per fold in the Dice check
DEFAULT_TOLERANCE = 0.005  # largest Dice loss per class that passes
DEFAULT_SEED = 0


# --- calibration and check ------------------------------------------------------------------------------

def calibration_patches(folder: Path, case_ids: Sequence[str], patch_size: Sequence[int], n: int,
                        seed: int) -> list[np.ndarray]:
    """``n`` patches ``(1, C, *patch)`` float32 of preprocessed cases: cases in a seeded random order
    (cycled), every third patch centred on foreground (as training oversamples), the rest anywhere."""
    if not case_ids:
        raise QuantizeError(f"{folder}: no training cases to calibrate on")
    rng = np.random.default_rng(seed)
    order = [case_ids[i] for i in rng.permutation(len(case_ids))]
    box_size = tuple(patch_size) if len(patch_size) == 3 else (1, *patch_size)
    patches = []
    for i in range(n):
        case = open_case(folder, order[i % len(order)])
        box = draw_patch_box(rng, case.data.shape[1:], box_size, force_fg=i % 3 == 2, locations=case.locations)
        image, _ = read_patch(case, box)
        if len(patch_size) == 2:
            image = image[:, 0]
        patches.append(np.ascontiguousarray(image[None], dtype=np.float32))
    return patches


def _labels(network: nn.Module, image: torch.Tensor, patch_size, spec) -> np.ndarray:
    probs = predict_probabilities([network], image, patch_size, regions=spec.has_regions, mirror_axes=())
    return labels_from_probabilities(probs.float().numpy(), regions_order(spec))


def check_against_f32(f32: nn.Module, int8: nn.Module, folder: Path, case_ids: Sequence[str], config, spec,
                      tolerance: float) -> dict[str, Any]:
    """Dice of both networks against the stored labels of ``case_ids`` (preprocessed volumes, sliding
    window without mirroring), averaged per class over the cases where it is defined, and the share
    of voxels where the two label maps agree."""
    if not case_ids:
        raise QuantizeError(f"{folder}: no cases to check the int8 network on")
    targets = evaluation_targets(spec.labels)
    dice: dict[str, dict[str, list[float]]] = {"fp32": {t: [] for t in targets}, "int8": {t: [] for t in targets}}
    same = total = 0
    for case_id in case_ids:
        case = open_case(folder, case_id)
        if case.seg is None:
            raise QuantizeError(f"{folder}: case {case_id} has no stored label to check against")
        image = torch.from_numpy(np.array(case.data, dtype=np.float32))
        ref = np.asarray(case.seg[0]).astype(np.int32)
        ref[ref < 0] = 0
        maps = {k: _labels(net, image, config.patch_size, spec) for k, net in (("fp32", f32), ("int8", int8))}
        for k, labels in maps.items():
            for name, m in case_metrics(ref, labels, config.spacing, targets, ignore_label=spec.ignore_label,
                                        distances=False).items():
                if m.dice is not None and not np.isnan(m.dice):
                    dice[k][name].append(float(m.dice))
        same += int((maps["fp32"] == maps["int8"]).sum())
        total += maps["fp32"].size
    mean = {k: {t: (float(np.mean(v)) if v else None) for t, v in d.items()} for k, d in dice.items()}
    drops = [mean["fp32"][t] - mean["int8"][t] for t in targets
             if mean["fp32"][t] is not None and mean["int8"][t] is not None]
    max_drop = float(max(drops)) if drops else 0.0
    return {"cases": list(case_ids), "dice_fp32": mean["fp32"], "dice_int8": mean["int8"],
            "voxel_agreement": same / total if total else None, "max_dice_drop": max_drop,
            "tolerance": tolerance, "passed": max_drop <= tolerance}


def quantize_network(model, patches: Sequence[np.ndarray]):
    """The int8 OpenVINO model of the f32 OpenVINO ``model``, calibrated on ``patches``."""
    with no_telemetry():
        try:
            import nncf
        except ImportError:
            raise QuantizeError("`autoseg quantize` needs NNCF: pip install -e '.[quantize]' "
                                "(or: pip install nncf openvino)") from None
        nncf.set_log_level(logging.ERROR)
        return nncf.quantize(model, nncf.Dataset(list(patches)), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(patches), fast_bias_correction=True)


# --- a whole model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoldResult:
    fold: Any
    model: Path  # the int8 .xml
    record: dict[str, Any]


def quantize_model(model, data_folder: Path, splits, *, patches: int = DEFAULT_PATCHES,
                   check_cases: int = DEFAULT_CHECK_CASES, tolerance: float = DEFAULT_TOLERANCE,
                   seed: int = DEFAULT_SEED, progress: Callable[[str], None] | None = None) -> list[FoldResult]:
    """Quantize every network of ``model`` (a :class:`~autoseg.inference.predictor.Predictor`) and
    check it; ``splits`` gives each fold's training and validation cases in ``data_folder``."""
    import openvino as ov  # optional (pip install -e '.[quantize]'): imported when quantizing

    if patches < 1 or check_cases < 1:
        raise QuantizeError(f"need at least one calibration patch (--patches) and one check case (--check-cases); "
                            f"got {patches} and {check_cases}")
    if tolerance < 0:
        raise QuantizeError(f"--tolerance must be >= 0, got {tolerance}")
    shape = (1, model.num_channels, *model.config.patch_size)
    say = progress or (lambda message: None)
    results = []
    for fold, network, checkpoint in zip(model.folds, model.networks, model.checkpoint_paths):
        checkpoint = Path(checkpoint).resolve()
        cases = splits.fold(fold)  # fold 'all': validation cases = training cases
        check = list(cases.val)[:check_cases]
        kind = "training" if fold == "all" else "validation"
        say(f"fold {fold}: calibrating on {patches} patches of {len(cases.train)} training cases")
        f32_model = convert_to_openvino(network, shape, checkpoint)
        int8_model = quantize_network(f32_model, calibration_patches(
            data_folder, list(cases.train), model.config.patch_size, patches, seed))
        xml = checkpoint.parent / int8_name(checkpoint)
        # the earlier record goes first: killed before the new one is written, no unchecked network is used
        save_record(checkpoint.parent, checkpoint, None)
        save_ir(int8_model, xml)
        say(f"fold {fold}: checking int8 against f32 on {len(check)} {kind} cases")
        f32_net = OpenVINONetwork.compile_all([f32_model], shape, "fp32")[0]
        int8_net = OpenVINONetwork.read(xml, shape)
        result = check_against_f32(f32_net, int8_net, data_folder, check, model.config, model.spec, tolerance)
        record = {"model": xml.name, "weights_sha256": weights_digest(network), "input_shape": list(shape),
                  "checkpoint": next((k for k, v in CHECKPOINTS.items() if v == checkpoint.name), checkpoint.name),
                  "check_cases": kind,
                  "calibration": {"patches": patches, "seed": seed, "training_cases": len(cases.train),
                                  "preset": "MIXED", "fast_bias_correction": True},
                  "check": result, "versions": {"openvino": ov.__version__, "nncf": _nncf_version()}}
        save_record(checkpoint.parent, checkpoint, record)
        results.append(FoldResult(fold, xml, record))
    return results


def _nncf_version() -> str:
    import nncf

    return str(nncf.__version__)
