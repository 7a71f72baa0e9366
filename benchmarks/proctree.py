"""Run a command and measure its whole process tree: wall time, CPU time, peak memory (Linux).

Memory is sampled by polling ``/proc`` (no psutil needed) every ``interval`` seconds:

- ``peak_rss_sum``: the largest sum of resident set sizes over all live processes of the tree at one
  sample. Pages shared between processes (forked workers, shared libraries) count once per process,
  so this over-states the real footprint of a pool.
- ``peak_pss_sum``: the same with proportional set sizes (``/proc/PID/smaps_rollup``; shared pages
  split between their users), the closest figure to "memory the run needed"; None when unreadable.
- ``max_single_rss``: the largest RSS any one process reached: the kernel's high-water mark
  ``VmHWM`` (``/proc/PID/status``), read at every sample, so a short peak between two samples is
  still counted (a process living less than one interval can be missed). ``ru_maxrss`` of
  ``wait4`` is not used: a child started by fork/vfork + exec inherits the *parent's* high-water
  mark, so it would report the benchmark script's own peak.
- ``cpu_s``: user + system CPU seconds of the command and all its descendants: this process makes
  itself a child subreaper (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``), so a descendant the command
  leaves behind (a multiprocessing fork server, which its parent never waits for) is reparented
  here and reaped after the command ends, and its CPU time is in ``RUSAGE_CHILDREN`` with the rest.

:func:`tree_cpu_seconds` reads the CPU time a running tree has used so far (for per-step figures
inside a process: read it at two moments and subtract).

Sampling costs a little CPU (a scan of ``/proc`` per sample); both tools being compared pay it.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat CPU times are in these clock ticks per second


@dataclass(frozen=True)
class TreeRun:
    """Figures of one measured command (bytes, seconds)."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_sum: int
    peak_pss_sum: int | None
    max_single_rss: int
    max_processes: int
    load_before: float
    load_after: float


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (its own CPU and that of children it has reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2:].split()  # fields[11:15]: utime stime cutime cstime
    return sum(int(v) for v in fields[11:15])


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds used so far by ``root`` (default: this process, all its threads) and
    its live descendants, including descendants they have already reaped. Resolution 1/``TICKS`` s."""
    return sum(_cpu_ticks(p) for p in tree_pids(os.getpid() if root is None else root)) / TICKS


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def _pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class _Sampler(threading.Thread):
    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.peak_rss = 0
        self.peak_pss: int | None = None  # stays None when smaps_rollup is unreadable
        self.max_procs = 0
        self.max_hwm = 0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = tree_pids(self.root)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in pids))
            self.max_hwm = max([self.max_hwm] + [_hwm(p) for p in pids])
            pss = [v for v in (_pss(p) for p in pids) if v is not None]
            if pss:
                self.peak_pss = max(self.peak_pss or 0, sum(pss))
            self.stop.wait(self.interval)


def _become_subreaper() -> None:
    """Orphaned descendants of our children come to this process (Linux 3.4+; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans(timeout: float = 60.0) -> None:
    """Wait for the descendants the command left behind (reparented here) to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 log: Path | None = None, interval: float = 0.25) -> TreeRun:
    """Run ``cmd`` to completion (stdout and stderr to ``log``) and measure it."""
    _become_subreaper()
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return TreeRun(returncode=proc.returncode, wall_s=wall, cpu_s=cpu,
                   peak_rss_sum=sampler.peak_rss, peak_pss_sum=sampler.peak_pss,
                   max_single_rss=sampler.max_hwm, max_processes=sampler.max_procs,
                   load_before=load_before, load_after=os.getloadavg()[0])
