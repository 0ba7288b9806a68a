"""A Ray cluster as the batch's workers: each job is one Ray task with the resources it needs.

Ray (https://docs.ray.io) places each task on a node with a free GPU (``num_gpus=1``, and Ray sets
``CUDA_VISIBLE_DEVICES`` for it) or free CPUs, and reports a task whose worker or node died as a
``WorkerCrashedError``/``NodeDiedError``. Retries stay with the batch runner (``max_retries=0`` here), so
local and Ray batches retry, count attempts and write the index the same way. Every node must have
threed installed and see ``OUT`` at the same path (a shared filesystem); the batch process alone
writes the index.
"""

from __future__ import annotations

from typing import Any

from threed.batch.worker import Task, run_task
from threed.errors import ThreedError


def _ray_task(task: Task) -> dict[str, Any]:
    from threed.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    return run_task(task)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ThreedError("--ray needs Ray: pip install 'threed[batch]' (or pip install 'ray>=2.9'); "
                          "without --ray, the batch runs on local worker processes") from exc
    return ray


class RayPool:
    """Jobs as Ray tasks on the cluster at ``address`` (``auto``: the running one; ``local``: start one here).

    If this process has already called ``ray.init``, that session is used as it is. ``gpu`` asks one GPU
    per job (``None``: if the cluster has GPUs); CPU jobs ask ``cpus_per_job`` CPUs. At most ``slots``
    tasks are in flight (default: as many as the cluster's GPUs or CPUs can run at once), so that the
    progress counts are true and Ctrl-C has little to cancel.
    """

    def __init__(self, address: str, gpu: bool | None = None, cpus_per_job: int = 1, slots: int | None = None):
        ray = self._ray = import_ray()
        self._owns_session = not ray.is_initialized()
        if self._owns_session:
            try:
                ray.init(address=None if address == "local" else address, include_dashboard=False,
                         log_to_driver=False)
            except ConnectionError as exc:
                reason = str(exc).rstrip(".")
                raise ThreedError(f"cannot reach a Ray cluster at {address!r}: {reason}; start one with `ray start "
                                  f"--head`, or use --ray local for a one-machine cluster") from exc
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.gpu = gpus > 0 if gpu is None else gpu
        if self.gpu and gpus == 0:
            raise ThreedError("the recipe asks for device=cuda but the Ray cluster has no GPUs")
        fits = gpus if self.gpu else int(resources.get("CPU", 1)) // cpus_per_job
        self.slots = slots or max(1, fits)
        self._remote = ray.remote(_ray_task).options(num_gpus=1 if self.gpu else 0, num_cpus=cpus_per_job,
                                                     max_retries=0)
        self._running: dict[Any, Task] = {}

    @property
    def busy(self) -> int:
        return len(self._running)

    def submit(self, task: Task) -> str:
        self._running[self._remote.remote(task)] = task
        return "ray task (gpu)" if self.gpu else "ray task"

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=len(self._running), timeout=timeout)
        finished = []
        for ref in ready:
            task = self._running.pop(ref)
            try:
                result = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:  # worker or node died, task could not run
                result = {"status": "error", "error": f"Ray: {type(exc).__name__}: {str(exc).splitlines()[0]}"}
            finished.append((task, result))
        return finished

    def close(self) -> None:
        """Cancel what is still in flight (its checkpoints stay) and end the session if this pool began it."""
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._owns_session:
            self._ray.shutdown()
