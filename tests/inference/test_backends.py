"""Backend and precision choices; OpenVINO agrees with PyTorch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.core.runtime import cpu_supports_bf16
from autoseg.inference.backends import BackendError, make_engine, resolve_choice
from autoseg.inference.conversion import OpenVINONetwork
from autoseg.inference.pipeline import predict_folder
from autoseg.inference.predictor import load_predictor

from .conftest import blob_image, save_fold, tiny_plans, write_nifti

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr("autoseg.inference.backends.cpu_has_bf16", lambda: True)


def test_bf16_is_refused_on_cpus_that_would_emulate_it(monkeypatch):
    monkeypatch.setattr("autoseg.inference.backends.cpu_has_bf16", lambda: False)
    with pytest.raises(BackendError, match="no native bf16"):
        resolve_choice("torch", "bf16", CPU)
    assert resolve_choice("torch", "bf16", CUDA) == ("torch", "bf16")


def test_auto_is_the_fastest_cpu_path_installed_and_fp16_on_cuda(native_bf16, monkeypatch):
    monkeypatch.setattr("autoseg.inference.backends.openvino_available", lambda: True)
    assert resolve_choice("auto", "auto", CPU)[0] == "openvino"
    monkeypatch.setattr("autoseg.inference.backends.openvino_available", lambda: False)
    assert resolve_choice("auto", "auto", CPU)[0] == "torch"
    assert resolve_choice("auto", "auto", CUDA) == ("torch", "fp16")
    assert resolve_choice("auto", "auto", MPS) == ("torch", "fp32")
    assert resolve_choice("torch", "bf16", CPU) == ("torch", "bf16")
    assert resolve_choice("openvino", "fp32", CPU) == ("openvino", "fp32")  # asked for: kept


@pytest.mark.parametrize("native, openvino, torch_", [(True, "bf16", "bf16"), (False, "fp32", "fp32")])
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_computes_it_natively(native, openvino, torch_,
                                                                                  monkeypatch):
    """Measured on trained weights (docs/benchmarks.md): bf16 keeps f32's Dice within 0.001 with
    both backends, so `auto` runs it on CPUs with native bf16; emulated bf16 is slower than f32."""
    monkeypatch.setattr("autoseg.inference.backends.cpu_supports_bf16", lambda: native)
    monkeypatch.setattr("autoseg.inference.backends.openvino_available", lambda: True)
    assert resolve_choice("auto", "auto", CPU) == ("openvino", openvino)
    assert resolve_choice("openvino", "auto", CPU) == ("openvino", openvino)
    assert resolve_choice("torch", "auto", CPU) == ("torch", torch_)
    monkeypatch.setattr("autoseg.inference.backends.openvino_available", lambda: False)
    assert resolve_choice("auto", "auto", CPU) == ("torch", torch_)
    assert resolve_choice("auto", "auto", CUDA) == ("torch", "fp16")  # GPUs: unchanged


@pytest.mark.parametrize("backend, precision, device, message", [
    ("openvino", "fp32", CUDA, "CPU only"),
    ("torch", "fp16", CPU, "for GPUs"),
    ("openvino", "fp16", CPU, "supports --precision"),
    ("tensorrt", "fp32", CPU, "choices: auto, torch, openvino"),
    ("torch", "int8", CPU, "runs with --backend openvino"),
    ("torch", "fp64", CPU, "choices: auto, fp32, bf16, fp16, int8"),
])
def test_impossible_combinations_say_what_to_use(backend, precision, device, message):
    with pytest.raises(BackendError, match=message):
        resolve_choice(backend, precision, device)


@pytest.fixture
def model(tmp_path):
    save_fold(tmp_path / "m", 0, tiny_plans())
    return load_predictor(tmp_path / "m")


def test_torch_engine_carries_the_autocast_dtype(model, native_bf16):
    engine = make_engine(model.networks, "torch", "bf16", CPU, (1, 1, 16, 16, 16))
    assert engine.amp_dtype is torch.bfloat16 and engine.describe() == "torch bf16 on cpu"
    assert make_engine(model.networks, "torch", "fp32", CPU, (1, 1, 16, 16, 16)).amp_dtype is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_engine_runs_the_precision_it_chose(model, native, monkeypatch):
    """The engine `auto` makes computes in the chosen precision: torch autocasts to bf16 and
    OpenVINO's compiled network computes in bf16 on native-bf16 CPUs; f32 elsewhere."""
    monkeypatch.setattr("autoseg.inference.backends.cpu_has_bf16", lambda: native)
    shape = (1, 1, 16, 16, 16)
    engine = make_engine(model.networks, "torch", "auto", CPU, shape)
    assert engine.amp_dtype is (torch.bfloat16 if native else None)
    assert engine.describe() == f"torch {'bf16' if native else 'fp32'} on cpu"
    pytest.importorskip("openvino")
    engine = make_engine(model.networks, "openvino", "auto", CPU, shape)
    assert engine.describe() == f"openvino {'bf16' if native else 'fp32'} on cpu"
    if native and not cpu_supports_bf16():
        pytest.skip("OpenVINO compiles bf16 as f32 on a CPU without native bf16")
    assert [n.inference_precision for n in engine.networks] == ["bf16" if native else "f32"]


def test_openvino_f32_matches_pytorch(model):
    pytest.importorskip("openvino")
    net = model.networks[0]
    ov_net = OpenVINONetwork.convert(net, (1, 1, 16, 16, 16), "fp32")
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        np.testing.assert_allclose(ov_net(x).numpy(), net(x).numpy(), atol=1e-4)
    with pytest.raises(BackendError, match="compiled for patches"):
        ov_net(torch.zeros(1, 1, 8, 16, 16))


def test_openvino_conversion_writes_each_instance_norm_as_one_mvn(model):
    """GroupNorm(C, C) converts to reshape -> MVN -> reshape, which costs the CPU plugin two layout
    conversions per norm; the network is converted with its norms written out instead."""
    pytest.importorskip("openvino")
    from autoseg.inference.conversion import convert_to_openvino

    net = model.networks[0]
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    ops = [op.get_type_name() for op in convert_to_openvino(net, (1, 1, 16, 16, 16)).get_ordered_ops()]
    assert norms > 0 and ops.count("MVN") == norms
    assert "GroupNormalization" not in ops and "Reshape" not in ops
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules()) == norms  # the network is not changed


def test_several_openvino_folds_free_their_buffers_after_each_call(model):
    """Folds run one after another on each window: each frees its intermediate buffers after its
    call (one set in memory, not one per fold), and gives the same result call after call."""
    pytest.importorskip("openvino")
    net = model.networks[0]
    one = make_engine([net], "openvino", "fp32", CPU, (1, 1, 16, 16, 16))
    two = make_engine([net, net], "openvino", "fp32", CPU, (1, 1, 16, 16, 16))
    assert [n.release_memory for n in one.networks] == [False]
    assert [n.release_memory for n in two.networks] == [True, True]
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    first, again = two.networks[0](x), two.networks[0](x)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    np.testing.assert_allclose(first.numpy(), one.networks[0](x).numpy(), atol=1e-5)


def test_a_caller_done_with_the_model_may_release_its_pytorch_networks(model, tmp_path):
    pytest.importorskip("openvino")
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    run = dict(progress=False, device="cpu", precision="fp32", tta=False)
    assert predict_folder(model, tmp_path / "in", tmp_path / "keep", backend="openvino", **run).ok
    assert len(model.networks) == 1  # by default the model stays usable
    assert predict_folder(model, tmp_path / "in", tmp_path / "drop", backend="openvino", release_networks=True, **run).ok
    assert model.networks == ()
    same = [np.asarray(nib.load(str(tmp_path / d / "c.nii.gz")).dataobj) for d in ("keep", "drop")]
    np.testing.assert_array_equal(*same)


def test_openvino_prediction_equals_torch_prediction(model, tmp_path):
    pytest.importorskip("openvino")
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    run = dict(progress=False, device="cpu", precision="fp32", tta=False, save_probabilities=True)
    a = predict_folder(model, tmp_path / "in", tmp_path / "torch", backend="torch", **run)
    b = predict_folder(model, tmp_path / "in", tmp_path / "ov", backend="openvino", **run)
    assert a.ok and b.ok and b.engine == "openvino fp32 on cpu"
    seg_a = np.asarray(nib.load(str(tmp_path / "torch" / "c.nii.gz")).dataobj)
    seg_b = np.asarray(nib.load(str(tmp_path / "ov" / "c.nii.gz")).dataobj)
    assert (seg_a == seg_b).mean() > 0.999


def test_openvino_prediction_from_cached_conversions_builds_no_network_and_does_not_import_monai(model, tmp_path):
    """`autoseg predict` on OpenVINO with the folds' conversions cached needs only their weights'
    digests: the torch networks are not built and MONAI (seconds to import) is not imported."""
    pytest.importorskip("openvino")
    write_nifti(tmp_path / "in" / "c_0000.nii.gz", blob_image())
    run = dict(progress=False, device="cpu", precision="fp32", tta=False)
    assert predict_folder(model, tmp_path / "in", tmp_path / "first", backend="openvino", **run).ok  # converts
    script = (
        "import sys\n"
        "from autoseg.cli import main\n"
        f"code = main(['predict', '-i', {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'again')!r}, '--model', "
        f"{str(model.model_dir)!r}, '--device', 'cpu', '--backend', 'openvino', '--precision', 'fp32', '--no-tta', "
        "'--no-progress'])\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'monai', 'matplotlib'}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    same = [np.asarray(nib.load(str(tmp_path / d / "c.nii.gz")).dataobj) for d in ("first", "again")]
    np.testing.assert_array_equal(*same)


def test_openvino_conversion_is_cached_next_to_the_checkpoint(model, monkeypatch):
    ov = pytest.importorskip("openvino")
    from autoseg.inference.conversion import OPENVINO_CACHE

    source = model.checkpoint_paths[0]
    first = make_engine(model.networks, "openvino", "fp32", CPU, (1, 1, 16, 16, 16), model.checkpoint_paths)
    cached = list((source.parent / OPENVINO_CACHE).glob("*.xml"))
    assert len(cached) == 1 and cached[0].with_suffix(".bin").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    second = make_engine(model.networks, "openvino", "fp32", CPU, (1, 1, 16, 16, 16), model.checkpoint_paths)
    x = torch.randn(1, 1, 16, 16, 16)
    np.testing.assert_array_equal(first.networks[0](x).numpy(), second.networks[0](x).numpy())
    source.touch()  # a changed checkpoint is converted again
    with pytest.raises(AssertionError, match="converted again"):
        make_engine(model.networks, "openvino", "fp32", CPU, (1, 1, 16, 16, 16), model.checkpoint_paths)
    monkeypatch.undo()
    other_shape = make_engine(model.networks, "openvino", "fp32", CPU, (1, 1, 16, 16, 8), model.checkpoint_paths)
    assert len(list((source.parent / OPENVINO_CACHE).glob("*.xml"))) == 2  # one per input shape
    current = next((source.parent / OPENVINO_CACHE).glob("*1x1x16x16x16*.xml"))
    for suffix in (".xml", ".bin"):  # a conversion by an autoseg before graph versions (or an older one)
        old = re.sub(r"-g\d+\.xml$", suffix, current.name)
        shutil.copy(current.with_suffix(suffix), current.parent / old)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # retrained
    make_engine(model.networks, "openvino", "fp32", CPU, (1, 1, 16, 16, 16), model.checkpoint_paths)
    cubes = [p.name for p in (source.parent / OPENVINO_CACHE).glob("*1x1x16x16x16*")]
    assert len(cubes) == 2 and all(str(source.stat().st_mtime_ns) in n for n in cubes)  # the old copy is gone
    assert len(list((source.parent / OPENVINO_CACHE).glob("*1x1x16x16x8*"))) == 2  # another shape is kept
    assert other_shape.networks


def _signal_stack():
    """The calling thread's alternate signal stack (address, flags, size), Linux only."""
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    current = StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current)) == 0
    return current.sp, current.flags, current.size


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="sigaltstack via libc")
def test_openvino_leaves_the_callers_signal_stack_alone(model):
    # OpenVINO's compile installs a signal stack that a release on another thread frees under the
    # compiling thread: the process then died of SIGSEGV at its next Python signal handler.
    pytest.importorskip("openvino")
    before = _signal_stack()
    network = OpenVINONetwork.convert(model.networks[0], (1, 1, 16, 16, 16), "fp32")
    assert _signal_stack() == before
    del network
