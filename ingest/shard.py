"""Tracing on Ray workers, writing in this process.

``RayTracing`` starts ``workers`` Ray actors, each holding one replica of the
model (one GPU each where the cluster has GPUs), and traces the batches of an
ingest on them. The traced batches come back to the calling process, the one
writer, which commits each in its own transaction exactly as a single-process
ingest does (``ingest.run``): the same rows, the same resume. Ray restarts an
actor whose process dies and runs its batch again (tracing has no side
effects), so a killed worker costs time, not prompts.

Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import os

from unpack.errors import InputError

from .run import TracingBackend

INSTALL = 'pip install -e ".[ray]"'
RESTARTS = 4  # times Ray restarts a dead worker, and retries the batch it held


def require_ray():
    """The ``ray`` module, or an InputError with the command that installs it."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "--workers and --ray need Ray, which is not installed here; install it "
            f"with `{INSTALL}` (from the project folder), then run the same command "
            "again"
        ) from None
    return ray


def start_ray(address: str | None, workers: int):
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` made on this
    machine), or start a local instance with this machine's CPUs. Returns
    ``(ray, started)``; ``started``: this call started it (shut it down after).
    A Ray already initialized in this process is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(
                f"--ray {address}: cannot join a Ray cluster there ({e}); start one "
                "with `ray start --head` or give its address (host:6379)"
            ) from None
    else:
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), **kw)
    return ray, True


class _Worker:
    """One model replica in a Ray actor (the class is made remote in RayTracing)."""

    def __init__(self, model: str, device: str, dtype, threads: int):
        import torch

        from unpack import Tracer
        from unpack.loading import load_model

        if threads:
            torch.set_num_threads(threads)
        m, tok = load_model(model, dtype=dtype, device=device)
        self.tracer = Tracer(model=m, tokenizer=tok)

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        from unpack.loading import model_info

        return {
            "names": list(self.tracer.comps.names),
            "model_info": model_info(self.tracer.model, self.tracer.spec),
        }

    def check_fits(self, lengths: list, n_traces: int) -> None:
        from .run import check_lengths

        check_lengths(self.tracer, lengths, n_traces)

    def trace(self, batch: list, config: dict, batch_size: int) -> list:
        from .run import trace_items

        trace_items(self.tracer, batch, config, batch_size)
        return batch


def _placement(ray, device: str, workers: int) -> tuple[str, float, int]:
    """``(device in the worker, GPUs per worker, CPU threads per worker)``: one GPU
    each when the device asks for one and the cluster has them (Ray then shows
    each worker its GPU as cuda:0); else the CPUs shared out."""
    gpus = ray.cluster_resources().get("GPU", 0)
    want = str(device or "cpu")
    if want.startswith("cuda") and gpus < 1:
        raise InputError(
            f"--device {want}: the Ray cluster has no GPU; use --device cpu (or "
            "auto), or join a cluster with GPUs (--ray ADDRESS)"
        )
    if want.startswith("cuda") or (want == "auto" and gpus >= 1):
        return "cuda", 1.0, 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return "cpu", 0.0, max(1, cpus // workers)


class RayTracing(TracingBackend):
    """A tracing backend for :func:`ingest.run.ingest` on ``workers`` Ray actors.
    Use it as a context manager (the actors are killed at the end)."""

    def __init__(self, model: str, workers: int, device: str = "cpu", dtype=None):
        ray = self.ray = require_ray()
        if not ray.is_initialized():
            raise InputError(
                "Ray is not running in this process; call ingest.shard.start_ray first"
            )
        where, gpus, threads = _placement(ray, device, workers)
        remote = ray.remote(_Worker).options(
            num_cpus=0 if gpus else threads,
            num_gpus=gpus,
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
        )
        self.model = model
        self.actors = [remote.remote(model, where, dtype, threads) for _ in range(workers)]
        self.pids = self._call("pid", all_actors=True)  # waits until every replica is loaded
        info = self._call("describe")
        self.names, self._info = info["names"], info["model_info"]

    def _call(self, method: str, *args, all_actors: bool = False):
        """``method`` on the first actor (or on all), with the worker's error as ours."""
        actors = self.actors if all_actors else self.actors[:1]
        try:
            out = self.ray.get([getattr(a, method).remote(*args) for a in actors])
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, InputError):
                raise InputError(str(e.cause)) from None
            raise
        except self.ray.exceptions.RayActorError as e:
            why = str(e).strip().splitlines()[-1]
            raise InputError(
                f"a Ray worker could not start with the model {self.model!r}: {why}"
            ) from None
        return out if all_actors else out[0]

    def model_info(self) -> dict:
        return self._info

    def check_fits(self, lengths: list, n_traces: int) -> None:
        """``ingest.run.check_lengths`` on a worker, for its device."""
        self._call("check_fits", lengths, n_traces)

    def traced(self, batches, config: dict, batch_size: int):
        """Each batch traced on some worker, in the order they finish; a worker
        runs its next batch while this process commits the last."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        yield from pool.map_unordered(lambda a, b: a.trace.remote(b, config, batch_size), batches)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
