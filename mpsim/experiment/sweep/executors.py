"""Where the points run: :func:`run_point` (in a worker), a local process pool, or a
dask.distributed cluster; both executors run the same tasks and give the same rows. In the
kernel world (``--on kernel``): :func:`run_kernel_point` on :func:`kernel_executor`, one point
after another in this process (the points share the machine's kernel)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterator

from mpsim.experiment import results, scenario
from mpsim.experiment.sweep.grid import SweepError
from mpsim.experiment.sweep.plan import PointOutcome, PointTask



def run_point(task: PointTask) -> PointOutcome:
    """Run one point exactly as ``mpsim run`` would: load the text with the overrides, run every
    variant and run index. An exception becomes the outcome's error; the sweep goes on."""
    started = time.perf_counter()
    try:
        loaded = scenario.load_text(task.scenario_text, name=task.scenario_name, source=task.scenario_source,
                                    overrides=task.overrides)
        outcome = results.run(loaded, variants=list(task.variants) or None)
        return PointOutcome(task.point_id, outcome.connections, outcome.transfers,
                            elapsed_s=time.perf_counter() - started)
    except Exception as err:  # noqa: BLE001 - any failure of a point is recorded, not fatal
        return PointOutcome(task.point_id, None, None, type(err).__name__, str(err), traceback.format_exc(),
                            time.perf_counter() - started)


def run_kernel_point(task: PointTask) -> PointOutcome:
    """Run one point exactly as ``mpsim run --on kernel`` would (:func:`mpsim.experiment.kernel_world.run_kernel`,
    with captures: the SYN and RST counts are read from them); an exception becomes the outcome's error."""
    from mpsim.experiment import kernel_world

    started = time.perf_counter()
    try:
        loaded = scenario.load_text(task.scenario_text, name=task.scenario_name, source=task.scenario_source,
                                    overrides=task.overrides)
        outcome = kernel_world.run_kernel(loaded, variants=list(task.variants) or None,
                                          skip_unbuildable=task.skip_unbuildable, proxy_cmd=task.proxy_cmd, pcap=True)
        return PointOutcome(task.point_id, outcome.connections, outcome.transfers,
                            elapsed_s=time.perf_counter() - started)
    except Exception as err:  # noqa: BLE001 - any failure of a point is recorded, not fatal
        return PointOutcome(task.point_id, None, None, type(err).__name__, str(err), traceback.format_exc(),
                            time.perf_counter() - started)


class SerialExecutor(cf.Executor):
    """Runs each submitted call at once, in this process, and hands back a finished future: points
    that must not overlap (the kernel world's share one kernel) and must stop cleanly on Ctrl-C
    (the KeyboardInterrupt reaches the testbed's context managers, which remove their namespaces;
    a pool's worker would be killed with them still up)."""

    def submit(self, fn, /, *args, **kwargs):  # noqa: ANN001 - cf.Executor's signature
        future: cf.Future = cf.Future()
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - as a pool's future holds it; Ctrl-C propagates
            future.set_exception(err)
        else:
            future.set_result(result)
        return future


@contextlib.contextmanager
def kernel_executor() -> Iterator[cf.Executor]:
    """The kernel world's executor: one point at a time, in this process (:class:`SerialExecutor`).
    Left by an error or Ctrl-C, it removes what a point's teardown did not finish: an interrupt
    that lands inside a teardown (the delay line's, the testbed's) stops it half-way."""
    finished = False
    try:
        yield SerialExecutor()
        finished = True
    finally:
        if not finished:
            remove_own_namespaces()


def remove_own_namespaces() -> list[str]:
    """Delete the namespaces this process's testbeds are named by (``mps-<our pid>-...``), killing
    what runs in them, with Ctrl-C and SIGTERM held off until done (a second one would stop this
    too); returns their names. Only this process's: parallel runs of others are left alone."""
    from mpsim.testbed import netns

    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        return netns.cleanup_stale(f"{netns.PREFIX}-{os.getpid()}", only_dead_owners=False)
    except Exception as err:  # noqa: BLE001 - said, not raised: the interrupt that brought us here goes on
        warnings.warn(f"namespaces of this sweep may be left over (remove mps-{os.getpid()}-*): {err}",
                      RuntimeWarning, stacklevel=2)
        return []
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(parent_pid: int) -> None:
    """In each local worker: leave Ctrl-C to the parent (it stops the pool), and exit if the parent
    dies without stopping the pool (SIGKILL): a worker would otherwise wait on its queue forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    forked_by = os.getppid()  # the forkserver (or the sweep itself): it changes when that process exits

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != forked_by:
                os._exit(1)
            try:
                os.kill(parent_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or the pid is someone else's now)
                os._exit(1)

    threading.Thread(target=watch, name="mpsim-sweep-parent-watch", daemon=True).start()


def default_workers() -> int:
    """The cores this process may use (the affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def local_executor(workers: int) -> Iterator[cf.Executor]:
    """A process pool of ``workers``; on the way out (an error, Ctrl-C) its processes are killed."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # imported once in the server, not once per worker: this module
        context.set_forkserver_preload([__name__])  # brings the scenario and results layers with it
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                  initargs=(os.getpid(),))
    finished = False
    try:
        yield pool
        finished = True
    finally:
        if not finished:
            # shutdown() alone would wait for the points in flight; nothing public kills them in 3.11.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def dask_executor(address: str, workers: int | None) -> Iterator[tuple[cf.Executor, int]]:
    """An executor on a dask.distributed cluster (``local``: a LocalCluster started here and closed
    on the way out), and how many points it runs at once."""
    import logging

    from distributed import Client, LocalCluster

    cluster = client = None
    try:
        if address == "local":
            cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            try:
                client = Client(address, timeout="10s")
            except (OSError, TimeoutError, ValueError) as err:
                raise SweepError(f"--dask {address}: cannot reach the scheduler ({err})") from None
        slots = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        yield client.get_executor(pure=False), max(1, slots)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


