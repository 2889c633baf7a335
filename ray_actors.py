"""Scale-out on Ray: reanalysis actors that prepare the learner's targets in other processes, on
this machine or on a cluster (the official code's "batch workers", ez/worker/batch_worker.py,
made deterministic), self-play actors that play the games between them (its "data workers",
ez/worker/data_worker.py, kept in lockstep with the learner), and an evaluation actor that plays the
evaluation games off the learner's path (its "eval worker", ez/worker/eval_worker.py).

`RayReanalysisPool` holds W actors (`ray_reanalysis_actors`), each with its own copy of the target
model; `target_pipeline.TargetPipeline` keeps `ray_pipeline_depth` batches in flight with it.
`RaySelfPlay` holds A actors (`ray_selfplay_actors`), each playing a contiguous A-th of the envs
with its own self-play model (selfplay.LockstepGames). `RayEvaluator` (`ray_eval_actor`) evaluates
snapshots of the online weights. The replay buffer, sampling, priorities, the learner, the game
counter and checkpoints stay in the trainer's process.

Reproducible by construction, not by timing:
- batch k (the batch of update k + 1) goes to actor k mod W and draws its noise from the stream
  `batch_rng(seed, k)`; it is sampled in the trainer, in update order;
- self-play actor a searches at decision d with the stream `selfplay_rng(seed, a, d)`; the trainer
  waits for every actor's step and seeds each new game from its game counter;
- the weights travel as one `ray.put` per refresh. A Ray actor runs one caller's calls in the order
  they were sent, so every batch is reanalysed with the weights sent before it, whatever the
  timing. On a CPU the same seed, W and depth give the same run, bit for bit;
- an evaluation changes nothing the run learns from; it is logged at the update whose weights it
  played, whenever it finishes.

Every wait has a timeout (`ray_timeout_seconds`); a failing actor's traceback, a dead actor or a
cluster too small for the actors stops the run with `ScaleOutError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from collections import deque
from typing import NamedTuple

import numpy as np

from config import Config

# The reanalysis random stream is seeded by (seed, REANALYSIS_STREAM) in one process, and batch k's
# by (seed, REANALYSIS_STREAM, k) with Ray actors: apart from the stream of sampling and self-play.
REANALYSIS_STREAM = 1
# Self-play actor a draws the search noise of decision d from (seed, SELFPLAY_STREAM, a, d).
SELFPLAY_STREAM = 2
# The terminal colours Ray puts into the error messages it relays.
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# Where `ray start` leaves the address of the cluster it began on this machine (Ray's default
# temporary folder), and how long a silent head is given to accept a connection.
RAY_CURRENT_CLUSTER = "/tmp/ray/ray_current_cluster"
HEAD_PROBE_SECONDS = 5.0
# How long actors just stopped (ray.kill returns at once) are given to hand back their CPUs.
RELEASE_SECONDS = 5.0
# What a cluster's workers need not receive of the repository (ray_address set).
UPLOAD_EXCLUDES = [".git", "runs", "docs/runs", "docs/figures", ".venv"]


class ScaleOutError(RuntimeError):
    """Ray could not start, place or hear from an actor, or an actor failed: the run stops."""


def batch_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The reanalysis random stream of batch `batch_number` (the batch of update number
    `batch_number` + 1) with Ray actors: keyed by the counter, so no timing can change it."""
    return np.random.default_rng((seed, REANALYSIS_STREAM, batch_number))


def selfplay_rng(seed: int, actor: int, decision: int) -> np.random.Generator:
    """The acting search's random stream of self-play actor `actor` at lockstep decision
    `decision`: keyed by the counters, so no timing can change it."""
    return np.random.default_rng((seed, SELFPLAY_STREAM, actor, decision))


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
    if address:
        address = answering_head(address)
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


def _actor_config(config: Config) -> Config:
    """An actor's settings: TensorFlow threads sized to the CPUs Ray reserves for it."""
    threads = config.intra_op_threads or max(1, int(config.ray_actor_cpus))
    return dataclasses.replace(config, intra_op_threads=threads)


def wait(references, what: str, config: Config, role: str = "reanalysis"):
    """`ray.get(references)` within `ray_timeout_seconds`, every failure turned into one
    ScaleOutError that names the `role` of the actor and `what` it was doing."""
    ray = import_ray()
    try:
        return ray.get(references, timeout=config.ray_timeout_seconds)
    except ray.exceptions.GetTimeoutError:
        raise ScaleOutError(f"no answer from the Ray {role} actors in "
                            f"{config.ray_timeout_seconds:g} s while {what} "
                            f"(ray_timeout_seconds)") from None
    except ray.exceptions.RayActorError as error:
        raise ScaleOutError(f"a Ray {role} actor died while {what}:\n"
                            + ANSI_COLOUR.sub("", str(error))) from None
    except ray.exceptions.RayTaskError as error:
        raise ScaleOutError(f"a Ray {role} actor failed while {what}:\n"
                            + ANSI_COLOUR.sub("", str(error))) from None


def start_actors(actor_class: type, count: int, config: Config, spec, role: str,
                 arguments: list[tuple] | None = None) -> list:
    """`count` Ray actors of `actor_class(config, spec, *arguments[k])`, each reserving
    `ray_actor_cpus`, once all of them answer; a cluster without the free CPUs (after
    RELEASE_SECONDS for those of stopped actors) is an error, not a wait."""
    ray = import_ray()
    cpus = config.ray_actor_cpus
    deadline = time.monotonic() + RELEASE_SECONDS
    free = ray.available_resources().get("CPU", 0.0)
    while count * cpus > free and time.monotonic() < deadline:
        time.sleep(0.1)
        free = ray.available_resources().get("CPU", 0.0)
    if count * cpus > free:
        raise ScaleOutError(
            f"{count} {role} actors of {cpus:g} CPUs need {count * cpus:g} CPUs; the Ray cluster "
            f"has {free:g} free of {ray.cluster_resources().get('CPU', 0):g} (lower "
            f"the ray_*_actors or ray_actor_cpus, or add machines)")
    remote_class = ray.remote(num_cpus=cpus, max_restarts=0, max_task_retries=0)(actor_class)
    actors = [remote_class.remote(config, spec, *(arguments[k] if arguments else ()))
              for k in range(count)]
    try:
        wait([actor.ready.remote() for actor in actors], f"starting the {role} actors", config,
             role)
    except ScaleOutError:
        for actor in actors:
            ray.kill(actor)
        raise
    return actors


def answering_head(address: str) -> str:
    """The head's host:port for `ray_address` ('auto': the cluster `ray start` began on this
    machine, as Ray finds it), once a connection to it opens: Ray itself would retry a silent
    address for minutes."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address and os.path.exists(RAY_CURRENT_CLUSTER):
            with open(RAY_CURRENT_CLUSTER) as file:
                address = file.read().strip()
        if not address:
            raise ScaleOutError("ray_address=auto: no cluster started by `ray start` on this "
                                "machine (start one, or give the head's host:port)")
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=HEAD_PROBE_SECONDS).close()
    except (OSError, ValueError):
        raise ScaleOutError(f"no Ray cluster answers at '{address}' (ray_address; start one "
                            f"with `ray start --head`)") from None
    return address


class ReanalysisActor:
    """One reanalysis worker (a Ray actor): a target model, its weights' version, and
    `targets.reanalyze`."""

    def __init__(self, config: Config, spec):
        from learner import worker_network

        self.config = _actor_config(config)
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


class _ActorsWithWeights:
    """Ray actors of one `role` that hold a model whose weights this process sends them: `wait`
    for their answers (a failed weight refresh before them is not passed over), `close` stops
    them."""

    def __init__(self, config: Config, actors: list, role: str, weights_name: str):
        self._ray, self.config, self.actors = import_ray(), config, actors
        self.role, self.weights_name = role, weights_name
        self._weight_replies: list = []

    def wait(self, references, what: str):
        if self._weight_replies:
            replies, self._weight_replies = self._weight_replies, []
            wait(replies, f"setting the {self.weights_name} weights", self.config, self.role)
        return wait(references, what, self.config, self.role)

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []


class RayReanalysisPool(_ActorsWithWeights):
    """W reanalysis actors (`ray_reanalysis_actors`) with the target model's weights, on the Ray
    instance this process is connected to (`start_ray`). `submit` sends batch k to actor k mod W;
    `set_weights` sends new weights to every actor, behind the batches already sent; `close` stops
    the actors."""

    def __init__(self, config: Config, spec, weights: list[np.ndarray]):
        super().__init__(config, start_actors(ReanalysisActor, config.ray_reanalysis_actors,
                                              config, spec, "reanalysis"),
                         "reanalysis", "target")
        self.version = -1
        self.set_weights(weights)

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


class SelfPlayActor:
    """One self-play worker (a Ray actor): envs `first_env` .. of the run with their frame stacks
    and a self-play model (selfplay.LockstepGames), searching with the stream `selfplay_rng`."""

    def __init__(self, config: Config, spec, actor: int, first_env: int, seeds: list[int]):
        from learner import worker_network
        from selfplay import LockstepGames

        self.config = _actor_config(config)
        self.games = LockstepGames(
            self.config, spec, worker_network(self.config, spec), first_env, seeds,
            lambda decision: selfplay_rng(config.seed, actor, decision))

    def ready(self) -> int:
        return os.getpid()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.games.set_weights(weights)

    def start(self, env_indices: list[int], seeds: list[int]) -> np.ndarray:
        return self.games.start(env_indices, seeds)

    def step(self, decision: int):
        return self.games.step(decision)


class RaySelfPlay(_ActorsWithWeights):
    """A self-play actors (`ray_selfplay_actors`) that play the run's envs between them, actor a
    a contiguous range of them, in lockstep: the interface of selfplay.LockstepGames for all the
    envs. `model` is this process's copy of their weights (a checkpoint saves it); weights sent by
    `set_weights` reach every actor before its next step."""

    def __init__(self, config: Config, spec, seeds: list[int], model):
        ranges = np.array_split(np.arange(config.num_envs), config.ray_selfplay_actors)
        super().__init__(config, start_actors(
            SelfPlayActor, len(ranges), config, spec, "self-play",
            [(a, int(envs[0]), [seeds[i] for i in envs]) for a, envs in enumerate(ranges)]),
            "self-play", "self-play")
        self.model = model
        self.first_envs = [int(envs[0]) for envs in ranges]
        self._send(model.get_weights())

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)
        self._send(weights)

    def _send(self, weights: list[np.ndarray]) -> None:
        reference = self._ray.put(weights)
        self._weight_replies = [actor.set_weights.remote(reference) for actor in self.actors]

    def _actor_of(self, env_index: int) -> int:
        return int(np.searchsorted(self.first_envs, env_index, side="right")) - 1

    def start(self, env_indices: list[int], seeds: list[int]) -> np.ndarray:
        """First frames [len(env_indices), *frame] of new games in those envs, in that order."""
        by_actor: dict[int, tuple[list, list]] = {}
        for index, seed in zip(env_indices, seeds):
            indices, actor_seeds = by_actor.setdefault(self._actor_of(index), ([], []))
            indices.append(index)
            actor_seeds.append(seed)
        actors = sorted(by_actor)
        frames = self.wait([self.actors[a].start.remote(*by_actor[a]) for a in actors],
                           f"starting games in envs {list(env_indices)}")
        frame_of = {index: frame for a, actor_frames in zip(actors, frames)
                    for index, frame in zip(by_actor[a][0], actor_frames)}
        return np.stack([frame_of[index] for index in env_indices])

    def step(self, decision: int):
        """One decision of every env: selfplay.SelfPlayStep of all of them, in env order."""
        from selfplay import concatenate_steps

        return concatenate_steps(self.wait([actor.step.remote(decision)
                                            for actor in self.actors],
                                           f"playing decision {decision}"))


class EvaluationActor:
    """The evaluation worker (a Ray actor): greedy games (`evaluate.play_episodes`) played by a
    network that takes a snapshot of the online weights."""

    def __init__(self, config: Config, spec):
        from learner import worker_network

        self.config = _actor_config(config)
        self.model = worker_network(self.config, spec)

    def ready(self) -> int:
        return os.getpid()

    def evaluate(self, weights: list[np.ndarray], seed: int, final: bool):
        """(evaluate.EpisodeResults, seconds) of `eval_episodes` games from `seed` on, each capped
        as the run's `final` evaluation or one before it (evaluate.evaluation_config)."""
        from evaluate import evaluation_config, play_episodes

        start = time.perf_counter()
        self.model.set_weights(weights)
        config = evaluation_config(self.config, final)
        result = play_episodes(self.model, config, config.env_id, config.eval_episodes,
                               seed=seed)
        return result, time.perf_counter() - start


class Evaluation(NamedTuple):
    """A finished evaluation of the weights taken at `updates` and `env_steps`."""
    updates: int
    env_steps: int
    result: object                 # evaluate.EpisodeResults
    seconds: float


class RayEvaluator:
    """One evaluation actor (`ray_eval_actor`), off the learner's path: `submit` a snapshot of the
    online weights taken at an update; `finished` gives the evaluations done so far and `drain`
    all of them, each in the order submitted; `pending` are the snapshots still out."""

    def __init__(self, config: Config, spec):
        self._ray, self.config = import_ray(), config
        [self.actor] = start_actors(EvaluationActor, 1, config, spec, "evaluation")
        self._out: deque = deque()           # (updates, env_steps, reference)

    @property
    def pending(self) -> list[tuple[int, int]]:
        return [(updates, env_steps) for updates, env_steps, _ in self._out]

    def submit(self, weights: list[np.ndarray], seed: int, updates: int, env_steps: int,
               final: bool) -> None:
        self._out.append((updates, env_steps, self.actor.evaluate.remote(weights, seed, final)))

    def finished(self) -> list[Evaluation]:
        done = []
        while self._out and self._ray.wait([self._out[0][2]], timeout=0)[0]:
            done.append(self._take())
        return done

    def drain(self) -> list[Evaluation]:
        return [self._take() for _ in range(len(self._out))]

    def drain_older_than(self, updates: int) -> list[Evaluation]:
        """Wait for the evaluations of weights taken before update `updates`."""
        done = []
        while self._out and self._out[0][0] < updates:
            done.append(self._take())
        return done

    def _take(self) -> Evaluation:
        updates, env_steps, reference = self._out.popleft()
        result, seconds = wait(reference, f"evaluating the weights of update {updates}",
                               self.config, "evaluation")
        return Evaluation(updates, env_steps, result, seconds)

    def close(self) -> None:
        self._ray.kill(self.actor)
        self._out.clear()
