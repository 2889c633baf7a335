"""Pipelined reanalysis in a second process (`reanalysis_process`).

Reanalysis (targets.py: the target model's initial inference and Gumbel search over every sampled
root) is pipelined with the learner: the next update's batch is reanalysed while the learner updates
on this one. In a thread, that overlap is limited by Python's interpreter lock, which the search's
tree and the many small network calls hold much of the time; with the `classic` preset's small MLPs
the two partly take turns (MinAtar's convolutions fill both cores either way, and gain nothing).
The official code, too, reanalyses in separate batch-worker processes. `ReanalysisProcess` keeps a
copy of the target model in a child process and reanalyses there; the parent keeps its own target
model (checkpoints, resume).

The child computes what `targets.reanalyze` computes in the parent: the same graph on the same
weights, batch and random stream. The parent's reanalysis random stream travels with each batch
and comes back advanced, so a run's streams (and its checkpoints) are those of the thread version,
and on a CPU, whose kernels are deterministic here, the targets are the same bit for bit
(`tests/test_train.py`).
"""

from __future__ import annotations

import multiprocessing
import traceback

import numpy as np

from config import Config


class ReanalysisProcess:
    """A child process holding a target model. `reanalyze` and `set_weights` block until the child
    answers; one request at a time (the Trainer reanalyses from its worker thread and waits for the
    batch in flight before it refreshes the weights)."""

    def __init__(self, config: Config, observation_shape: tuple, num_actions: int,
                 weights: list[np.ndarray]):
        # A fresh interpreter (spawn): a forked copy of a process that runs TensorFlow is unsafe.
        context = multiprocessing.get_context("spawn")
        self._connection, child_connection = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_connection, config, observation_shape, num_actions),
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
        """`targets.reanalyze(batch, target_model, updates=updates, rng=rng)`, computed in the child;
        `rng` advances as if it had been drawn from here."""
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


def _serve(connection, config: Config, observation_shape: tuple, num_actions: int) -> None:
    """The child: build a target model as the parent's, then answer requests until told to stop
    (None) or the parent goes away."""
    try:
        model = _target_model(config, observation_shape, num_actions)
    except Exception:                       # answered to the first request, which then raises
        connection.recv()
        connection.send(("error", traceback.format_exc()))
        return
    from targets import reanalyze

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


def _target_model(config: Config, observation_shape: tuple, num_actions: int):
    """A network shaped as the parent's target model, TensorFlow set up as in the parent (threads,
    precision, deterministic kernels on a CPU); its initial weights are replaced by the parent's."""
    import keras
    import tensorflow as tf

    from learner import configure_tensorflow
    from networks import EfficientZeroNet

    on_gpu = configure_tensorflow(config)
    keras.utils.set_random_seed(config.seed)
    if not on_gpu:
        tf.config.experimental.enable_op_determinism()
    return EfficientZeroNet(config, observation_shape, num_actions)
