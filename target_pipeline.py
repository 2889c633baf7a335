"""The targets of the coming updates, prepared ahead of the learner: the batch sampled from the
replay buffer and reanalysed with the target model (targets.py: initial inference, Gumbel search,
SVE and TD values).

`TargetPipeline` is what the trainer asks for each update's batch and targets. Without
`pipelined_reanalysis` it samples and reanalyses when asked. With it, it also samples the next
update's batch and reanalyses it in a worker thread while the learner updates on this one, as the
official code's batch workers prepare batches while its learner trains. In a thread that overlap is
limited by Python's interpreter lock, which the search's tree and the many small network calls hold
much of the time; with the `classic` preset's small MLPs the two partly take turns (MinAtar's
convolutions fill both cores either way). With `ray_reanalysis_actors` the batches go to Ray actors
in other processes (ray_actors.py), `ray_pipeline_depth` of them in flight.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

from config import Config
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
        self.thread = self.pool = None
        self.depth = 1 if config.pipelined_reanalysis else 0
        if config.ray_reanalysis_actors:
            from ray_actors import RayReanalysisPool

            self.pool = RayReanalysisPool(config, spec, target_model.get_weights())
            self.depth = config.ray_pipeline_depth or config.ray_reanalysis_actors
        elif config.pipelined_reanalysis:
            self.thread = ThreadPoolExecutor(1)
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
        else:
            targets = self.thread.submit(reanalyze, batch, self.target_model, config=self.config,
                                         updates=updates, rng=self.reanalysis_rng)
        return PreparedTargets(batch, targets, sample_seconds, rng_state, reanalysis_rng_state)

    def set_target_weights(self, weights: list[np.ndarray]) -> None:
        """The target model (and its copies on the actors) takes `weights`, after the batches in
        flight have been reanalysed with the old ones."""
        if self.pool is not None:
            self.pool.set_weights(weights)              # queued behind them on every actor
        else:
            for prepared in self.prepared:
                prepared.targets.result()
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
        if self.pool is not None:
            self.pool.close()

