"""Per-case stages in parallel: one case per task, on local worker processes
(`data.workers`) or, given a Ray cluster, on Ray tasks (`boneseg.sweep.tasks`).

A case function is a module-level function of picklable arguments that reads its inputs
and writes its outputs itself (atomically) and returns a small, picklable result, so
what travels between processes is paths and summaries, never volumes. Results come
back in the order of the cases, whatever order they finish in, so everything a stage
writes from them is byte-identical to a serial run. The first failure stops the stage
and names its case; nothing the stage writes after the loop (an index, a QA file)
appears. `data.workers: 2` is this process and one child, both taking cases from one
queue, so the child's start-up (seconds: an interpreter importing the stage's modules)
overlaps this process's first cases. Each of them gets cores // workers torch threads,
so workers x threads never oversubscribes the cores. While a map runs, every process
keeps the memory its cases free (`_keep_freed_memory`) instead of handing it back to the
OS and faulting it in again for the next case.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

from boneseg.errors import BonesegError, DataError

# a runner that maps on a cluster: (fn, items, names, desc, progress) -> results in order
Remote = Callable[[Callable, Sequence, Sequence[str], str, bool], list]


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's limit shows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# `data.workers: auto` runs a stage in this process when its inputs total less than this:
# starting workers (an interpreter each, importing torch) costs ~1.5 s, more than a small
# cohort's cases take (bench/cohort_scale.py)
AUTO_MIN_BYTES = 64 * 2**20


def resolve_workers(setting: int | str) -> int:
    """`data.workers`: a count, or "auto" = the cores."""
    return cores() if setting == "auto" else max(1, int(setting))


def file_sizes(paths) -> list[int]:
    """The sizes of a stage's input files (0 for one that is missing: its case fails by name)."""
    from pathlib import Path

    return [Path(p).stat().st_size if Path(p).is_file() else 0 for p in paths]


def named(exc: BaseException, name: str) -> BaseException:
    """The failure of case `name`: a boneseg error keeps its type and one line, led by the
    case unless it names it already; anything else carries the case as a note."""
    if isinstance(exc, BonesegError):
        text = str(exc)
        return type(exc)(text if name in text else f"case {name}: {text}")
    exc.add_note(f"(while processing case {name})")
    return exc


# glibc hands a freed block of >= 128 KiB back to the OS at once (munmap, or a trim of
# the heap's top), so the next case's arrays of the same sizes fault in and zero every
# page again: ~30,000 page faults and ~0.1 s of kernel time per 512 x 512 x 64 labels
# case, in the memory bandwidth that the workers share (docs/benchmarks.md). Inside a
# map, large blocks come from the heap and freed ones stay with the process for reuse.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3)
KEEP_FREED = 2**30  # bytes: a freed heap top up to this stays; blocks up to this use the heap
GLIBC_DEFAULT = 128 * 2**10  # both thresholds' starting values


@cache
def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None: musl,
    macOS and Windows keep their allocator's own behaviour."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _mallopt(trim: int, mmap: int) -> bool:
    """Set glibc's trim and mmap thresholds; False where the C library is not glibc."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_TRIM_THRESHOLD, trim) and libc.mallopt(M_MMAP_THRESHOLD, mmap))


@contextmanager
def _keep_freed_memory():
    """Freed memory stays in this process for the block; after it, the defaults return and
    what is free goes back to the OS (malloc_trim). The defaults return even where raising
    failed half-way (an older glibc refuses an mmap threshold above 32 MiB after taking the trim one)."""
    _mallopt(KEEP_FREED, KEEP_FREED)
    try:
        yield
    finally:
        if _mallopt(GLIBC_DEFAULT, GLIBC_DEFAULT):
            _glibc().malloc_trim(0)


class _Queue:
    """The cases' queue, in shared memory so that every process claims its next case itself
    (a parent busy in a long C call, holding its GIL, never keeps a child waiting): the next
    index, each case's state (0 waiting, 1 running, 2 done), the count done, and a stop flag
    (a failure, Ctrl-C)."""

    def __init__(self, ctx, n: int):
        self.next, self.done, self.stop, self.n = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("b", 0), n
        self.state = ctx.Array("b", n, lock=False)  # each case's entry is written by its holder only

    def claim(self) -> int | None:
        with self.next.get_lock():
            if self.stop.value or self.next.value >= self.n:
                return None
            self.next.value += 1
            i = self.next.value - 1
        self.state[i] = 1
        return i

    def finished(self, i: int) -> None:
        self.state[i] = 2
        with self.done.get_lock():
            self.done.value += 1


_queue: _Queue | None = None  # a child's, from its initializer


def _init_worker(threads: int, queue: _Queue | None = None) -> None:
    """A local worker's threads, set before any op so that its pools start that size: torch's
    when the preloaded case module brought torch (importing it here would cost every worker
    seconds), else the environment, which a later import of torch or a BLAS reads."""
    global _queue
    _queue = queue
    _mallopt(KEEP_FREED, KEEP_FREED)  # a worker lives for one map
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _drain(fn: Callable, items: Sequence) -> tuple[dict, tuple | None]:
    """A child's loop: cases from the queue until it is empty or stopped; its results, and
    (index, exception) of the case that failed, if one did (the others then stop)."""
    out: dict[int, object] = {}
    while (i := _queue.claim()) is not None:
        try:
            out[i] = fn(*items[i])
        except BaseException as exc:  # raised, named, by the parent
            _queue.stop.value = 1
            return out, (i, exc)
        _queue.finished(i)
    return out, None


@contextmanager
def _torch_threads(threads: int):
    """This process's torch threads for the block, when torch is loaded (the parent takes
    cases beside its workers, at their share of the cores)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


@dataclass
class Pool:
    """Where a stage's cases run: `workers` local processes (1: in this process), or the
    `remote` runner of a Ray cluster."""

    workers: int = 1
    remote: Remote | None = None
    auto: bool = False  # `data.workers: auto`: small inputs (< AUTO_MIN_BYTES) run in this process
    used: int = field(default=0, init=False)  # the processes the last map ran on (0: none yet)

    @property
    def where(self) -> str:
        """Where the last map ran: "Ray tasks" (with nodes, when the runner counts them),
        "2 workers", "1 process"."""
        nodes = getattr(self.remote, "nodes", None)
        if nodes is not None:
            return f"Ray tasks on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
        if self.remote is not None:
            return "Ray tasks"
        return "1 process" if self.used <= 1 else f"{self.used} workers"

    def map(self, fn: Callable, items: Sequence, names: Sequence[str], desc: str,
            progress: bool = True, sizes: Sequence[int] | None = None) -> list:
        """[fn(*item) for item in items], in order; `names` are the cases, for the progress
        bar's count and for the failure's message; `sizes` their input bytes (for `auto`)."""
        items, names = list(items), list(names)
        if self.remote is not None and items:
            return self.remote(fn, items, names, desc, progress)
        small = self.auto and sizes is not None and sum(sizes) < AUTO_MIN_BYTES
        self.used = 1 if self.workers <= 1 or len(items) <= 1 or small else min(self.workers, len(items))
        with _keep_freed_memory():
            if self.used == 1:
                return _serial(fn, items, names, desc, progress)
            return _local(fn, items, names, desc, progress, self.used)


def _serial(fn, items, names, desc, progress) -> list:
    from tqdm import tqdm

    out = []
    for item, name in tqdm(list(zip(items, names)), desc=desc, unit="case", disable=not progress):
        try:
            out.append(fn(*item))
        except Exception as exc:
            raise named(exc, name) from None
    return out


def _local(fn, items, names, desc, progress, workers: int) -> list:
    """`workers` processes: this one and workers - 1 children, all claiming cases from one
    queue in shared memory. This process works through the first cases while its children
    start (each an interpreter importing the case module, torch included: seconds), so
    their start-up costs the stage almost nothing."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    # forkserver: each child forks from a clean server process that has imported the case
    # function's module once (none of this process's threads, one torch import in all)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__])
    threads = max(1, cores() // workers)
    queue = _Queue(ctx, len(items))
    results: dict[int, object] = {}
    failures: dict[int, BaseException] = {}
    mine: int | None = None  # the case this process holds
    children = ProcessPoolExecutor(workers - 1, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, queue))
    with children as ex, tqdm(total=len(items), desc=desc, unit="case", disable=not progress) as bar:
        drains = [ex.submit(_drain, fn, items) for _ in range(workers - 1)]
        try:
            with _torch_threads(threads):
                while (mine := queue.claim()) is not None:
                    try:
                        results[mine] = fn(*items[mine])
                    except Exception as exc:  # named, and raised below
                        queue.stop.value = 1
                        failures[mine] = named(exc, names[mine])
                        break
                    queue.finished(mine)
                    bar.update(queue.done.value - bar.n)
            pending = set(drains)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                bar.update(queue.done.value - bar.n)
                for f in done:
                    try:
                        got, failed = f.result()
                    except BrokenProcessPool:  # killed (out of memory?) mid-case
                        queue.stop.value = 1
                        lost = next((i for i in range(len(items)) if queue.state[i] == 1 and i != mine), 0)
                        failures.setdefault(lost, DataError(
                            f"case {names[lost]}: a {desc} worker process died (out of memory?). "
                            "Lower data.workers and run again."))
                        continue
                    results.update(got)
                    if failed is not None:
                        failures[failed[0]] = named(failed[1], names[failed[0]])
        except BaseException:  # Ctrl-C: no new cases; the children finish the ones they hold
            queue.stop.value = 1
            raise
    if failures:
        raise failures[min(failures)] from None
    return [results[i] for i in range(len(items))]
