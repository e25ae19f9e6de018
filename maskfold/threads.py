"""How many threads torch computes with: the cores this process may use, less those its own workers keep busy.

torch starts with one intra-op thread per core of the machine, whatever else runs there; its OpenMP threads
spin while they wait for a core, so two training processes on the same cores each ran 3.7 times slower than
with one thread each (three: 7.6 times; bench/README.md). `--threads N` chooses, an `OMP_NUM_THREADS` the user
set is taken when no --threads is given, and every script says in its log what it took and why. torchrun sets
OMP_NUM_THREADS=1 for its processes where the user set none; that one is not the user's choice, and each process
takes its share of the cores instead.
"""
from __future__ import annotations

import os

from maskfold.cli import UserError, opt

DECODING_AHEAD = "the cores this process may use less the one that decodes ahead"


def option(default_words: str):
    """The --threads option of a script whose default is `default_words` (after OMP_NUM_THREADS)."""
    return opt(None, f"torch's compute threads (default: OMP_NUM_THREADS if set, else {default_words})", metavar="N")


def usable_cores() -> int:
    """The cores this process may run on (a taskset, a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(cap: int = 8) -> int:
    """Loader workers that leave the model half the cores: one on two cores, eight from sixteen."""
    return max(1, min(cap, usable_cores() // 2))


def choose(requested: int | None, workers: int = 0, processes: int = 1) -> tuple[int, str]:
    """(threads, why): --threads; else OMP_NUM_THREADS; else this process's share of the cores (`processes`
    share them: torchrun's on one machine) less its `workers` (at least one)."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested}: give 1 or more")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    torchruns = processes > 1 and env == "1" and not parent_set_omp()
    if env.isdigit() and int(env) > 0 and not torchruns:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    share = max(1, cores // max(processes, 1))
    n = max(1, share - workers)
    of = f"{cores} cores" + (f" / {processes} processes" if processes > 1 else "")
    return n, f"{of} less {workers} worker{'s' if workers != 1 else ''}" if workers else of


def parent_set_omp() -> bool:
    """Whether OMP_NUM_THREADS was in the environment the parent process (torchrun) started with: its
    /proc/<pid>/environ, which torchrun's own setting of it does not change. Where that cannot be read, torchrun's
    1 is taken as its own (`--threads 1` chooses one thread in any case)."""
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            return any(v.startswith(b"OMP_NUM_THREADS=") for v in f.read().split(b"\0"))
    except OSError:
        return False


def set_threads(requested: int | None, workers: int = 0, processes: int = 1) -> tuple[int, str]:
    """Set torch's intra-op threads: how many, and the words for the script's log line ('threads 1 (2 cores less
    1 worker)')."""
    import torch

    n, why = choose(requested, workers, processes)
    torch.set_num_threads(n)
    return n, f"threads {n} ({why})"
