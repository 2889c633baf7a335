"""MinAtar Freeway: does the value head fit its own training targets? From a checkpoint and the
replay buffer saved with it, it samples positions uniformly (the distribution the importance
weights correct prioritized replay to), forms their value targets as the learner does
(targets.reanalyze, with the checkpoint's network as the target network) and prints, by the
chicken's row, the mean target beside the mean value v(h(o)) the network predicts. Then it trains
the value head alone (the MLP after the value head's reduction, everything before it frozen) on
those positions and targets with the learner's loss (cross-entropy to the two-hot target) and
prints its per-row values again: if the head can fit the targets on frozen features, what keeps
the trained network from it lies in how the run trains, not in the head's reach.

    python docs/probes/freeway_value_fit.py <run>/checkpoints/ckpt-<updates> [--samples 10240]
                                             [--steps 3000] [--batch 256] [--learning-rate 1e-3]
                                             [--unrolled]

With --unrolled it prints instead, by the chicken's row at t+k, the value the learner's unrolled
states g^k(h(o_t)) predict (the actions taken) beside the mean target: whether g's states carry
what the value loss asks of them at positions 1..K.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import targets  # noqa: E402
from buffer import ReplayBuffer  # noqa: E402
from evaluate import load_model  # noqa: E402

CHICKEN_CHANNEL = 0
BATCH = 256
ROWS = range(1, 10)                      # row 0 is the crossing itself: the chicken never stays


def chicken_rows(frames: np.ndarray) -> np.ndarray:
    """The chicken's row in each frame [B, 10, 10, C] (-1 where it is not shown)."""
    chicken = frames[..., CHICKEN_CHANNEL] > 0
    return np.where(chicken.any(axis=(1, 2)), chicken.any(axis=2).argmax(axis=1), -1)


def sampled(checkpoint, net, samples: int, seed: int):
    """Batches of uniformly sampled positions, each with its reanalysed targets (targets.Targets)
    and the representation h(o_t) of its root."""
    config = checkpoint.config
    buffer = ReplayBuffer.load(os.path.join(checkpoint.path, "buffer"),
                               dataclasses.replace(config, use_priority=False))
    rng = np.random.default_rng(seed)
    for _ in range(samples // BATCH):
        batch = buffer.sample(BATCH, rng)
        fresh = targets.reanalyze(batch, net, config=config, updates=checkpoint.state["updates"],
                                  rng=rng)
        observations = np.concatenate([batch.frames[:, s] for s in range(config.frame_stack)],
                                      axis=-1)
        yield batch, fresh, net.represent(net.preprocess(observations), training=False)


def positions(checkpoint, net, samples: int, seed: int):
    """Uniformly sampled positions: value-head features [N, F], targets [N], values [N], rows."""
    stack = checkpoint.config.frame_stack
    features, value_targets, values, rows = [], [], [], []
    for batch, fresh, latent in sampled(checkpoint, net, samples, seed):
        for block in net.prediction.tower:
            latent = block(latent, training=False)
        reduced = net.prediction.value_reduce(latent, training=False)      # f's value path
        features.append(reduced.numpy())
        value_targets.append(fresh.values[:, 0])
        values.append(net.value_support.to_scalar(
            net.prediction.value_mlp(reduced, training=False)).numpy())
        rows.append(chicken_rows(batch.frames[:, stack - 1]))
    features = np.concatenate(features).reshape(len(np.concatenate(rows)), -1)
    return features, np.concatenate(value_targets), np.concatenate(values), np.concatenate(rows)


def unrolled(checkpoint, net, samples: int, seed: int):
    """Uniformly sampled positions unrolled K steps by g with the actions taken: for k = 1..K the
    value v(g^k(h(o_t))) [N, K], its target [N, K], its mask [N, K] and the chicken's row in
    frame t+k [N, K]."""
    stack, K = checkpoint.config.frame_stack, checkpoint.config.unroll_steps
    values, value_targets, masks, rows = [], [], [], []
    for batch, fresh, latent in sampled(checkpoint, net, samples, seed):
        lstm_state = net.initial_lstm_state(BATCH)
        step_values = []
        for k in range(1, K + 1):
            latent, _, lstm_state = net.dynamics(latent, batch.actions[:, k - 1], lstm_state,
                                                 training=False)
            step_values.append(net.value_support.to_scalar(
                net.predict(latent, training=False)[0]).numpy())
        values.append(np.stack(step_values, axis=1))
        value_targets.append(fresh.values[:, 1:])
        masks.append(batch.value_masks[:, 1:])
        rows.append(np.stack([chicken_rows(batch.frames[:, stack - 1 + k])
                              for k in range(1, K + 1)], axis=1))
    return tuple(np.concatenate(x) for x in (values, value_targets, masks, rows))


def fit_head(net, features: np.ndarray, value_targets: np.ndarray, steps: int, batch: int,
             learning_rate: float, seed: int) -> np.ndarray:
    """Trains the value MLP alone on frozen features; returns its values on all positions."""
    head, support = net.prediction.value_mlp, net.value_support
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, len(features), batch)
        with tf.GradientTape() as tape:
            logits = head(features[rows], training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                support.two_hot(value_targets[rows]), logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, head.trainable_variables),
                                      head.trainable_variables))
    return support.to_scalar(head(features, training=False)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint folder of a MinAtar Freeway run")
    parser.add_argument("--samples", type=int, default=10_240, help="positions sampled")
    parser.add_argument("--steps", type=int, default=3_000, help="steps of the head's refit")
    parser.add_argument("--batch", type=int, default=BATCH, help="the refit's batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the refit's Adam rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unrolled", action="store_true",
                        help="print v(g^k(h(o_t))) by the chicken's row at t+k instead")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    net = load_model(checkpoint, checkpoint.config.env_id, checkpoint.config)
    if args.unrolled:
        values, value_targets, masks, rows = unrolled(checkpoint, net, args.samples, args.seed)
        K = values.shape[1]
        print(f"{args.checkpoint}: {len(rows)} positions sampled uniformly, unrolled by g with "
              f"the actions taken; by the chicken's row at t+k: mean target, then mean "
              f"v(g^k(h(o_t))) for k = 1..{K}")
        for row in ROWS:
            at = (rows == row) & (masks > 0)
            unrolled_means = "  ".join(f"{values[:, k][at[:, k]].mean():.3f}" for k in range(K))
            print(f"  {row}  {value_targets[at].mean():.3f}  {unrolled_means}")
        return
    features, value_targets, values, rows = positions(checkpoint, net, args.samples, args.seed)
    refit = fit_head(net, features, value_targets, args.steps, args.batch,
                     args.learning_rate, args.seed)
    print(f"{args.checkpoint}: {len(rows)} positions sampled uniformly; by the chicken's row: "
          f"positions, mean target, mean v(h(o)), mean v after {args.steps} steps of the head "
          f"alone")
    for row in ROWS:
        at = rows == row
        print(f"  {row}  {at.sum():5d}  {value_targets[at].mean():.3f}  {values[at].mean():.3f}  "
              f"{refit[at].mean():.3f}")


if __name__ == "__main__":
    main()
