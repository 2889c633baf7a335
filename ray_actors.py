"""Scale-out on Ray: reanalysis actors that prepare the learner's targets in other processes, on
this machine or on a cluster (the official code's "batch workers", ez/worker/batch_worker.py,
made deterministic).

`RayReanalysisPool` holds W actors (`ray_reanalysis_actors`), each with its own copy of the target
model; `target_pipeline.TargetPipeline` keeps `ray_pipeline_depth` batches in flight with it. The
replay buffer, sampling, priorities, learner and checkpoints stay in the trainer's process.

Reproducible by construction, not by timing:
- batch k (the batch of update k + 1) goes to actor k mod W and draws its noise from the stream
  `reanalysis_rng(seed, k)`; it is sampled in the trainer, in update order;
- the weights travel as one `ray.put` per refresh. A Ray actor runs one caller's calls in the order
  they were sent, so every batch is reanalysed with the weights sent before it, whatever the
  timing. On a CPU the same seed, W and depth give the same run, bit for bit.

Every wait has a timeout (`ray_timeout_seconds`); a failing actor's traceback, a dead actor or a
cluster too small for the actors stops the run with `ScaleOutError`.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from config import Config

# The reanalysis random stream is seeded by (seed, REANALYSIS_STREAM) in one process, and batch k's
# by (seed, REANALYSIS_STREAM, k) with Ray actors: apart from the stream of sampling and self-play.
REANALYSIS_STREAM = 1
# The terminal colours Ray puts into the error messages it relays.
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# What a cluster's workers need not receive of the repository (ray_address set).
UPLOAD_EXCLUDES = [".git", "runs", "docs/runs", "docs/figures", ".venv"]


class ScaleOutError(RuntimeError):
    """Ray could not start, place or hear from an actor, or an actor failed: the run stops."""


def batch_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The reanalysis random stream of batch `batch_number` (the batch of update number
    `batch_number` + 1) with Ray actors: keyed by the counter, so no timing can change it."""
    return np.random.default_rng((seed, REANALYSIS_STREAM, batch_number))


def import_ray():
    """The `ray` module, or a clear error where it is not installed."""
    try:
        import ray
    except ImportError:
        raise ScaleOutError("ray_* settings need Ray: pip install -r requirements.txt") from None
    return ray


def start_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Connect this process to Ray: a new instance on this machine (`address` empty; `num_cpus`
    logical CPUs, default the cores) or a running cluster (`ray_address`). Returns whether this call
    made the connection (then `ray.shutdown` is the caller's)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    repository = os.path.dirname(os.path.abspath(__file__))
    options = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    try:
        if address:
            # Another machine's workers get the code as a copy of the repository.
            ray.init(address=address, **options,
                     runtime_env={"working_dir": repository, "excludes": UPLOAD_EXCLUDES})
        else:
            # A new instance even where `ray start` runs one; its actors work at the trainer's
            # priority (Ray lowers its workers' by default).
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", num_cpus=num_cpus, **options,
                     runtime_env={"env_vars": {"PYTHONPATH": repository}})
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"at '{address}'" if address else "on this machine"
        raise ScaleOutError(f"cannot start Ray {where}: {str(error).splitlines()[0]}") from None
    return True


class ReanalysisActor:
    """One reanalysis worker (a Ray actor): a target model, its weights' version, and
    `targets.reanalyze`."""

    def __init__(self, config: Config, spec):
        from learner import worker_network

        threads = config.intra_op_threads or max(1, int(config.ray_actor_cpus))
        self.config = dataclasses.replace(config, intra_op_threads=threads)
        self.model = worker_network(self.config, spec)
        self.version = -1

    def ready(self) -> int:
        return os.getpid()

    def set_weights(self, version: int, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)
        self.version = version

    def reanalyze(self, batch, updates: int, version: int):
        """`targets.reanalyze` of the batch of update `updates` + 1, with the weights of `version`
        (sent before this call, so already in place)."""
        from targets import reanalyze

        if version != self.version:
            raise RuntimeError(f"batch {updates} expects target weights {version}, the actor "
                               f"holds {self.version}")
        return reanalyze(batch, self.model, config=self.config, updates=updates,
                         rng=batch_rng(self.config.seed, updates))


class RayTargets:
    """The targets of one batch being reanalysed by an actor: `result()` waits for them (at most
    `ray_timeout_seconds`) as a `concurrent.futures.Future` would."""

    def __init__(self, pool: RayReanalysisPool, reference, batch_number: int):
        self._pool, self._reference, self.batch_number = pool, reference, batch_number
        self._value = None

    def result(self):
        if self._value is None:
            self._value = self._pool.wait(self._reference, f"reanalysing batch {self.batch_number}")
            self._reference = None
        return self._value


class RayReanalysisPool:
    """W reanalysis actors (`ray_reanalysis_actors`) with the target model's weights. `submit`
    sends batch k to actor k mod W; `set_weights` sends new weights to every actor, behind the
    batches already sent; `close` stops the actors (and Ray, if this pool started it)."""

    def __init__(self, config: Config, spec, weights: list[np.ndarray]):
        ray = import_ray()
        self._ray, self.config = ray, config
        self._own_ray = start_ray(config.ray_address)
        self.actors, self._weight_replies, self.version = [], [], -1
        try:
            count, cpus = config.ray_reanalysis_actors, config.ray_actor_cpus
            free = ray.available_resources().get("CPU", 0.0)
            if count * cpus > free:
                raise ScaleOutError(
                    f"{count} reanalysis actors of {cpus:g} CPUs need {count * cpus:g} CPUs; the "
                    f"Ray cluster has {free:g} free of {ray.cluster_resources().get('CPU', 0):g} "
                    f"(lower ray_reanalysis_actors or ray_actor_cpus, or add machines)")
            actor_class = ray.remote(num_cpus=cpus, max_restarts=0,
                                     max_task_retries=0)(ReanalysisActor)
            self.actors = [actor_class.remote(config, spec) for _ in range(count)]
            self.wait([actor.ready.remote() for actor in self.actors],
                      "starting the reanalysis actors")
            self.set_weights(weights)
        except BaseException:
            self.close()
            raise

    def submit(self, batch, updates: int) -> RayTargets:
        """Reanalyse the batch of update `updates` + 1 on actor `updates` mod W."""
        actor = self.actors[updates % len(self.actors)]
        return RayTargets(self, actor.reanalyze.remote(batch, updates, self.version), updates)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Every actor takes `weights` after the batches already sent to it (one `ray.put`)."""
        self.version += 1
        reference = self._ray.put(weights)
        self._weight_replies = [actor.set_weights.remote(self.version, reference)
                                for actor in self.actors]

    def wait(self, references, what: str):
        """`ray.get(references)`, with every failure turned into one ScaleOutError."""
        exceptions = self._ray.exceptions
        try:
            if self._weight_replies:       # a failed refresh must not pass unseen
                replies, self._weight_replies = self._weight_replies, []
                self.wait(replies, "setting the target weights")
            return self._ray.get(references, timeout=self.config.ray_timeout_seconds)
        except exceptions.GetTimeoutError:
            raise ScaleOutError(f"no answer from the Ray reanalysis actors in "
                                f"{self.config.ray_timeout_seconds:g} s while {what} "
                                f"(ray_timeout_seconds)") from None
        except exceptions.RayActorError as error:
            raise ScaleOutError(f"a Ray reanalysis actor died while {what}:\n"
                                + ANSI_COLOUR.sub("", str(error))) from None
        except exceptions.RayTaskError as error:
            raise ScaleOutError(f"a Ray reanalysis actor failed while {what}:\n"
                                + ANSI_COLOUR.sub("", str(error))) from None

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._own_ray:
            self._ray.shutdown()
            self._own_ray = False
