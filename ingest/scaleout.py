"""Scale-out of the attribution step: a map of ``jobs.run_job`` over prompts, three ways.

- ``InProcess``: the caller's model, in the caller's process (``--workers 1``, the default).
- ``LocalPool``: ``--workers N`` processes on this machine (spawned, so no forked torch
  state), each with its own model replica; on a machine with GPUs worker i uses GPU i mod n.
- ``RayPool``: ``--backend ray``: N Ray actors, one model replica each (one GPU each when the
  cluster has GPUs), on one machine or a whole Ray cluster (``ray start --head`` on one machine,
  ``ray start --address HEAD:6379`` on the others, then ``--ray-address auto``).

Every backend yields ``JobResult`` objects in completion order, with the GraphFile inside:
the driver writes graph files and loads the store, so workers need neither the store nor a
shared filesystem. A worker gets its model either as a *spec* (model and transcoder sources it
loads itself: the CLI's way, cheap to ship) or as the loaded objects (pickled; how tests and
library callers with an in-memory tiny model do it).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.ingest.jobs import AttributionJob, AttributionSettings, JobResult, run_job

BACKENDS = ("local", "ray")


class ScaleOutError(CircuitAtlasError, RuntimeError):
    """A backend that cannot start: Ray missing or unreachable, a worker that cannot load."""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker gets its model and transcoders: sources to load, or loaded objects."""

    model: str | None = None  # load_model spec (demo, a directory, a .gguf, a hub id)
    transcoders: str | None = None  # load_transcoders source
    dtype: str = "float32"
    device: str = "auto"  # auto: the worker's GPU if it has one, else cpu
    objects: tuple[Any, Any] | None = None  # (LoadedModel, TranscoderSet) to pickle instead

    def load(self, gpu_index: int | None = None) -> tuple[Any, Any]:
        import torch

        device = self.device
        if device == "auto":
            device = f"cuda:{gpu_index or 0}" if torch.cuda.is_available() else "cpu"
        if self.objects is not None:
            lm, tc = self.objects
            if str(lm.device) != device and device.startswith("cuda"):
                lm.model.to(device)
                lm.device = torch.device(device)
                tc.to(device)
            return lm, tc
        if not (self.model and self.transcoders):
            raise ScaleOutError("a worker needs a model and transcoders (specs or loaded objects)")
        from circuit_atlas.engine.models.loading import load_model
        from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

        lm = load_model(self.model, dtype=self.dtype, device=device)
        tc = load_transcoders(self.transcoders, device=device, dtype=lm.dtype)
        return lm, tc


class Attributor(Protocol):
    def map(self, jobs: Iterable[AttributionJob]) -> Iterator[JobResult]: ...

    def close(self) -> None: ...


def usable_cpus() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def in_process_threads() -> int:
    """Torch intra-op threads for attributing in the driver: its cores less one, which the store
    loader thread (a COPY per batch, beside the attribution) and the driver's own work need.
    With as many threads as cores, every parallel op waits at its barrier for a thread the
    loader or another process has descheduled: on 2 shared cores a tiny model's prompt took
    34 s with 2 threads and 4 s with 1 (bench/ingest_pipeline.py, docs/benchmarks/pipeline.md)."""
    return max(1, usable_cpus() - 1)


class InProcess:
    """Attribute in this process with the caller's model (torch on ``threads`` threads, default
    `in_process_threads()`, while it runs; the caller's setting is restored after)."""

    def __init__(self, lm: Any, tc: Any, settings: AttributionSettings, threads: int | None = None) -> None:
        self.lm, self.tc, self.settings = lm, tc, settings
        self.threads = threads or in_process_threads()

    def map(self, jobs: Iterable[AttributionJob]) -> Iterator[JobResult]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for job in jobs:
                yield run_job(self.lm, self.tc, job, self.settings)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        pass


# -- local process pool ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _pool_init(spec: ModelSpec, settings: AttributionSettings, threads: int, counter: Any) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lm, tc = spec.load(index % n_gpu if n_gpu else None)
    _WORKER.update(lm=lm, tc=tc, settings=settings)


def _pool_run(job: AttributionJob) -> JobResult:
    return run_job(_WORKER["lm"], _WORKER["tc"], job, _WORKER["settings"])


class LocalPool:
    """N worker processes on this machine, each with a model replica."""

    def __init__(self, spec: ModelSpec, settings: AttributionSettings, workers: int, threads: int | None = None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        threads = threads or max(1, usable_cpus() // workers)
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_pool_init,
            initargs=(spec, settings, threads, ctx.Value("i", 0)),
        )

    def map(self, jobs: Iterable[AttributionJob]) -> Iterator[JobResult]:
        window = 2 * self.workers  # bounded in flight: memory stays flat on big corpora
        pending: set[Future] = set()
        todo = deque(jobs)
        while todo or pending:
            while todo and len(pending) < window:
                pending.add(self.pool.submit(_pool_run, todo.popleft()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    yield fut.result()
                except Exception as exc:  # a worker that died (out of memory, failed to load)
                    raise ScaleOutError(f"a local attribution worker failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- Ray -----------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ScaleOutError("--backend ray needs Ray: pip install 'circuit-atlas[scale]' (or pip install ray)") from None
    return ray


class RayPool:
    """N Ray actors, one model replica each; one GPU each when the cluster has GPUs."""

    def __init__(
        self, spec: ModelSpec, settings: AttributionSettings, workers: int | None, address: str | None = None,
        threads: int | None = None,
    ) -> None:
        ray = _import_ray()
        from ray.util import ActorPool

        self.started = not ray.is_initialized()
        if self.started:
            try:
                # a local Ray of our own needs no dashboard (its start is the slowest part)
                extra = {} if address else {"include_dashboard": False}
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **extra)
            except Exception as exc:
                raise ScaleOutError(f"cannot start or reach Ray (address {address or 'local'}): {exc}") from exc
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        n = workers if workers and workers > 0 else max(1, gpus or 1)
        per_gpu = 1 if gpus >= n else (gpus / n if gpus else 0)
        per_cpu = max(1, cpus // n) if not gpus else 1

        @ray.remote
        class _Worker:
            def __init__(self, spec: ModelSpec, settings: AttributionSettings, threads: int) -> None:
                import torch

                torch.set_num_threads(max(1, threads))
                self.lm, self.tc = spec.load(0)  # Ray sets CUDA_VISIBLE_DEVICES: its GPU is cuda:0
                self.settings = settings

            def run(self, job: AttributionJob) -> JobResult:
                return run_job(self.lm, self.tc, job, self.settings)

        ref = ray.put(spec)
        self.ray = ray
        self.actors = [
            _Worker.options(num_gpus=per_gpu, num_cpus=per_cpu).remote(ref, settings, threads or per_cpu) for _ in range(n)
        ]
        self.pool = ActorPool(self.actors)
        self.workers = n

    def map(self, jobs: Iterable[AttributionJob]) -> Iterator[JobResult]:
        try:
            yield from self.pool.map_unordered(lambda actor, job: actor.run.remote(job), list(jobs))
        except self.ray.exceptions.RayError as exc:
            raise ScaleOutError(f"a Ray attribution worker failed: {exc}") from exc

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        if self.started:  # a local Ray this run started: stop it (a cluster we joined keeps running)
            self.ray.shutdown()


def make_attributor(
    backend: str,
    workers: int,
    settings: AttributionSettings,
    *,
    lm: Any = None,
    tc: Any = None,
    spec: ModelSpec | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
) -> Attributor:
    """The backend for ``--backend``/``--workers``: in this process for one local worker.
    ``threads``: torch threads per worker (default: see each backend)."""
    if backend not in BACKENDS:
        raise ScaleOutError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise ScaleOutError(f"--threads must be >= 1, got {threads}")
    if workers < 1 and backend == "local":
        raise ScaleOutError(f"--workers must be >= 1, got {workers}")
    if spec is None:
        spec = ModelSpec(objects=(lm, tc))
    if backend == "ray":
        return RayPool(spec, settings, workers, ray_address, threads=threads)
    if workers == 1:
        if lm is None or tc is None:
            lm, tc = spec.load()
        return InProcess(lm, tc, settings, threads)
    return LocalPool(spec, settings, workers, threads)
