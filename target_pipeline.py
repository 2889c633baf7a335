"""The targets of the coming updates, prepared ahead of the learner: the batch sampled from the
replay buffer and reanalysed with the target model (targets.py: initial inference, Gumbel search,
SVE and TD values).

`TargetPipeline` is what the trainer asks for each update's batch and targets. Without
`pipelined_reanalysis` it samples and reanalyses when asked. With it, it also samples the next
update's batch and reanalyses it in a worker thread while the learner updates on this one, as the
official code's batch workers prepare batches while its learner trains. In a thread that overlap is
limited by Python's interpreter lock, which the search's tree and the many small network calls hold
much of the time; with the `classic` preset's small MLPs the two partly take turns (MinAtar's
convolutions fill both cores either way). With `reanalysis_process` the thread hands the batch to
`ReanalysisProcess`, a child process with its own copy of the target model.

The child computes what `targets.reanalyze` computes in the parent: the same graph on the same
weights, batch and random stream. The parent's reanalysis random stream travels with each batch
and comes back advanced, so a run's streams (and its checkpoints) are those of the thread version,
and on a CPU, whose kernels are deterministic here, the targets are the same bit for bit
(`tests/test_train.py`).
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

from config import Config
from learner import worker_network
from targets import reanalyze


class PreparedTargets(NamedTuple):
    """The batch of an update and its targets: computed, or being computed by the worker. The random
    states from before the batch was drawn let the pipeline discard it exactly."""
    batch: object                        # buffer.Batch
    targets: Future                      # -> targets.Targets (or ray_actors.RayTargets)
    sample_seconds: float
    rng_state: dict                      # the sampling stream before the batch was drawn
    reanalysis_rng_state: dict           # the reanalysis stream before its reanalysis
    wait_seconds: float = 0.0            # how long `TargetPipeline.next` waited for the targets


class TargetPipeline:
    """Batches and targets for the updates, in order. `next` gives one update's; the target model's
    weights change only through `set_target_weights`; `discard` drops the batches prepared ahead and
    rewinds both random streams, so that a checkpoint holds exactly what a resumed run computes
    next; `close` stops the workers.

    Pipelined, the batch of the next update is drawn before this update's priorities are written,
    and across a target refresh it is reanalysed with the previous target model: the staleness the
    official code's batch workers also have (larger there, and untracked). With Ray actors
    (`ray_reanalysis_actors`) `depth` batches are in flight: batch k is drawn during update
    k - depth and reanalysed with the target weights in force then."""

    def __init__(self, config: Config, sample: Callable[[np.random.Generator], object],
                 target_model, rng: np.random.Generator, reanalysis_rng: np.random.Generator,
                 spec):
        self.config, self.sample, self.target_model = config, sample, target_model
        self.rng, self.reanalysis_rng = rng, reanalysis_rng
        self.thread = self.process = self.pool = None
        self.depth = 1 if config.pipelined_reanalysis else 0
        if config.ray_reanalysis_actors:
            from ray_actors import RayReanalysisPool

            self.pool = RayReanalysisPool(config, spec, target_model.get_weights())
            self.depth = config.ray_pipeline_depth or config.ray_reanalysis_actors
        elif config.pipelined_reanalysis:
            self.thread = ThreadPoolExecutor(1)
            if config.reanalysis_process:
                self.process = ReanalysisProcess(config, spec, target_model.get_weights())
        self.prepared: deque[PreparedTargets] = deque()

    def next(self, updates: int, following: int) -> PreparedTargets:
        """The batch of update number `updates` + 1 with its targets computed. Pipelined, the
        batches of the next updates (at most `following`, the updates still to come after this one)
        are sampled and their reanalysis started before this returns."""
        start = time.perf_counter()
        prepared = self.prepared.popleft() if self.prepared else self._prepare(updates)
        prepared.targets.result()
        prepared = prepared._replace(wait_seconds=time.perf_counter() - start)
        while len(self.prepared) < min(self.depth, following):
            self.prepared.append(self._prepare(updates + 1 + len(self.prepared)))
        return prepared

    def _prepare(self, updates: int) -> PreparedTargets:
        """Sample the batch of update number `updates` + 1 and reanalyse it with the target model:
        at once, in the worker thread (with its own random stream), or on a Ray actor."""
        rng_state = self.rng.bit_generator.state
        reanalysis_rng_state = self.reanalysis_rng.bit_generator.state
        start = time.perf_counter()
        batch = self.sample(self.rng)
        sample_seconds = time.perf_counter() - start
        if self.pool is not None:
            targets = self.pool.submit(batch, updates)
        elif self.thread is None:
            targets = Future()
            targets.set_result(reanalyze(batch, self.target_model, config=self.config,
                                         updates=updates, rng=self.rng))
        elif self.process is not None:
            targets = self.thread.submit(self.process.reanalyze, batch, updates=updates,
                                         rng=self.reanalysis_rng)
        else:
            targets = self.thread.submit(reanalyze, batch, self.target_model, config=self.config,
                                         updates=updates, rng=self.reanalysis_rng)
        return PreparedTargets(batch, targets, sample_seconds, rng_state, reanalysis_rng_state)

    def set_target_weights(self, weights: list[np.ndarray]) -> None:
        """The target model (and its copies in the child or the actors) takes `weights`, after the
        batches in flight have been reanalysed with the old ones."""
        if self.pool is not None:
            self.pool.set_weights(weights)              # queued behind them on every actor
        else:
            for prepared in self.prepared:
                prepared.targets.result()
            if self.process is not None:
                self.process.set_weights(weights)
        self.target_model.set_weights(weights)

    def discard(self) -> None:
        """Drop the batches prepared ahead and rewind the random streams to before them."""
        if self.prepared:
            for prepared in self.prepared:
                prepared.targets.result()
            self.rng.bit_generator.state = self.prepared[0].rng_state
            self.reanalysis_rng.bit_generator.state = self.prepared[0].reanalysis_rng_state
            self.prepared.clear()

    def close(self) -> None:
        if self.thread is not None:
            self.thread.shutdown()
        if self.process is not None:
            self.process.close()
        if self.pool is not None:
            self.pool.close()


class ReanalysisProcess:
    """A child process holding a target model. `reanalyze` and `set_weights` block until the child
    answers; one request at a time (`TargetPipeline` reanalyses from its worker thread and waits for
    the batch in flight before it refreshes the weights)."""

    def __init__(self, config: Config, spec, weights: list[np.ndarray]):
        # A fresh interpreter (spawn): a forked copy of a process that runs TensorFlow is unsafe.
        context = multiprocessing.get_context("spawn")
        self._connection, child_connection = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_connection, config, spec),
            name="reanalysis", daemon=True)
        self._process.start()
        child_connection.close()
        self.set_weights(weights)

    def _request(self, message):
        try:
            self._connection.send(message)
            status, answer = self._connection.recv()
        except (EOFError, OSError):            # the child has gone, or close() was called
            self._process.join(timeout=5)
            raise RuntimeError(f"the reanalysis process stopped (exit code "
                               f"{self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the reanalysis process failed:\n{answer}")
        return answer

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Give the child's target model these weights (the parent's target model refreshed)."""
        self._request(("weights", weights))

    def reanalyze(self, batch, *, updates: int, rng: np.random.Generator):
        """`targets.reanalyze(batch, target_model, updates=updates, rng=rng)`, computed in the
        child; `rng` advances as if it had been drawn from here."""
        targets, rng_state = self._request(("reanalyze", (batch, updates,
                                                          rng.bit_generator.state)))
        rng.bit_generator.state = rng_state
        return targets

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(None)
            except OSError:
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
        self._connection.close()


def _serve(connection, config: Config, spec) -> None:
    """The child: build a target model as the parent's, then answer requests until told to stop
    (None) or the parent goes away."""
    try:
        model = worker_network(config, spec)
    except Exception:                       # answered to the first request, which then raises
        connection.recv()
        connection.send(("error", traceback.format_exc()))
        return
    rng = np.random.default_rng()
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        kind, payload = message
        try:
            if kind == "weights":
                model.set_weights(payload)
                answer = None
            else:
                batch, updates, rng_state = payload
                rng.bit_generator.state = rng_state
                targets = reanalyze(batch, model, config=config, updates=updates, rng=rng)
                answer = (targets, rng.bit_generator.state)
            connection.send(("ok", answer))
        except Exception:                                   # reported to the parent, which raises
            connection.send(("error", traceback.format_exc()))
