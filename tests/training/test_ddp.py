import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from autoseg.core.checkpoint import FINAL, load_checkpoint
from autoseg.training import ddp
from tiny_workspace import FAST, make_workspace, tiny_plan


def test_detect_reads_torchrun_environment():
    assert ddp.detect({}) == ddp.SINGLE and not ddp.SINGLE.is_distributed
    ctx = ddp.detect({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.is_distributed) == (1, 2, 1, False, True)
    with pytest.raises(ValueError, match="outside"):
        ddp.detect({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("batch, world, shares", [(9, 2, [5, 4]), (2, 2, [1, 1]), (1, 2, [1, 1]), (7, 1, [7])])
def test_batch_is_split_over_ranks(batch, world, shares):
    assert [ddp.batch_share(batch, ddp.DistContext(r, world, r)) for r in range(world)] == shares


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, root: str, port: int, extra: dict | None = None) -> None:
    from pathlib import Path

    from autoseg.training import session
    from autoseg.training.session import TrainRequest
    from autoseg.workspace import Workspace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fit = session._fit

    def fit_and_keep(run, *args):  # every rank's final weights, to check they stayed in sync
        fit(run, *args)
        torch.save(run.model.state_dict(), Path(root) / f"rank{rank}.pt")

    session._fit = fit_and_keep
    ctx = ddp.DistContext(rank, 2, rank)
    try:
        session.train(Workspace(Path(root) / "ws"), TrainRequest(settings={**FAST, "epochs": 2, **(extra or {})}),
                      dist=ctx, progress=False)
    finally:
        ddp.shutdown(ctx)


@pytest.mark.slow
def test_two_gloo_processes_train_in_sync_with_deep_supervision(tmp_path):
    make_workspace(tmp_path / "ws", plan=tiny_plan(features=(4, 8, 8, 8)))  # 4 stages: 2 supervised outputs
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    run_dir = tmp_path / "ws" / "results" / "Dataset990_Tiny" / "unet__autosegPlans__3d_fullres" / "fold_0"
    ckpt = load_checkpoint(run_dir / FINAL)
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_two_gloo_processes_fit_one_time_budget_plan(tmp_path):
    """Under a time budget every rank times itself; the ranks fit the same plan from their mean times
    (a rank that stopped earlier than another would hang the next all-reduce)."""
    make_workspace(tmp_path / "ws")
    mp.spawn(_worker, args=(str(tmp_path), _free_port(), {"time_budget": 3600.0, "epochs": 3}), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    run_dir = tmp_path / "ws" / "results" / "Dataset990_Tiny" / "unet__autosegPlans__3d_fullres" / "fold_0"
    state = load_checkpoint(run_dir / FINAL)["train_state"]
    assert state["epoch"] == 3 and state["budget_plan"]["epochs"] == 3 and state["budget_elapsed"] > 0


@pytest.mark.slow
def test_torchrun_runs_the_train_command_on_two_processes(tmp_path):
    ws = make_workspace(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "autoseg", "train", "--workdir", str(ws.root), "--fold", "0", "--epochs", "1", "--iters-per-epoch",
           "2", "--val-iters", "1", "--num-workers", "0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained ") == 1  # rank 0 alone reports (and writes)
    ckpt = load_checkpoint(ws.results / "Dataset990_Tiny" / "unet__autosegPlans__3d_fullres" / "fold_0" / FINAL)
    assert ckpt["train_state"]["epoch"] == 1


def _stop_worker(rank: int, root: str, port: int) -> None:
    """Rank 1 alone gets SIGTERM (recorded as the handler would) just before its 3rd optimiser step."""
    import signal
    from pathlib import Path

    from autoseg.training import session, trainer
    from autoseg.training.session import TrainRequest
    from autoseg.training.stopping import StopSignals, TrainingStopped
    from autoseg.workspace import Workspace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    stop, step, calls = StopSignals(), trainer.train_step, [0]

    def counted(run, image, target):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            stop.signum = signal.SIGTERM
        return step(run, image, target)

    trainer.train_step = counted
    ctx = ddp.DistContext(rank, 2, rank)
    try:
        session.train(Workspace(Path(root) / "ws"), TrainRequest(settings=dict(FAST, epochs=3)), dist=ctx,
                      progress=False, stop=stop)
        result = f"finished after step {calls[0]}"
    except TrainingStopped as e:
        result = f"stopped by {signal.Signals(e.signum).name} after step {calls[0]}, epochs done {e.epochs_done}"
    finally:
        ddp.shutdown(ctx)
    (Path(root) / f"rank{rank}.txt").write_text(result)


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    make_workspace(tmp_path / "ws")
    procs = mp.spawn(_stop_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not procs.join(timeout=1):  # a rank left behind in a collective would hang here
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the ranks did not stop together")
    assert FAST["iters_per_epoch"] == 2  # so step 3 is the first step of the second epoch
    texts = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert texts == ["stopped by SIGTERM after step 3, epochs done 1"] * 2
    run_dir = tmp_path / "ws" / "results" / "Dataset990_Tiny" / "unet__autosegPlans__3d_fullres" / "fold_0"
    assert load_checkpoint(run_dir / "checkpoint_latest.pt")["train_state"]["epoch"] == 1
    assert not (run_dir / ".lock").exists()
