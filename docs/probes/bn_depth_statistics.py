"""BatchNorm across the unroll: do the statistics f's layers share fit the root and every depth?
From a checkpoint and the replay buffer saved with it (a discrete-action run), it samples positions
as the learner does, unrolls g K steps with the actions taken, and prints at each depth k = 0..K:

- the latent's root-mean-square size (g's states may grow with depth);
- for each BatchNorm of f (its tower, then the value and policy heads, in call order), how this
  depth's batch sits against the moving statistics inference uses: the median over channels of
  |d| = |μ_B − μ| / σ and of r = σ_B / σ. r far below 1 means the depth's features are squashed
  to that fraction of their spread before the head reads them;
- how far the training-mode forward (the unroll of one update, whose calls move the statistics
  the next calls use) is from the inference-mode forward the search runs: mean |Δ value| and
  mean |Δ policy logit|, the statistics restored between the two.

    python docs/probes/bn_depth_statistics.py <run>/checkpoints/ckpt-<updates> [--batches 8]
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import networks  # noqa: E402
from buffer import ReplayBuffer  # noqa: E402
from evaluate import load_model  # noqa: E402


def unrolled_latents(net, config, batch, training: bool):
    """h(o_t), then g^k with the actions taken: K + 1 latents [B, ...] (training mode moves the
    moving statistics, as one update's unroll does)."""
    observations = np.concatenate([batch.frames[:, s] for s in range(config.frame_stack)],
                                  axis=-1)
    latent = net.represent(net.preprocess(observations), training=training)
    lstm_state = net.initial_lstm_state(len(observations))
    latents = [latent]
    for k in range(1, config.unroll_steps + 1):
        latent, _, lstm_state = net.dynamics(latent, batch.actions[:, k - 1], lstm_state,
                                             training=training)
        latents.append(latent)
    return latents


def f_batch_norm_inputs(net, latent):
    """The inputs of f's BatchNorm layers on `latent` (inference mode), in call order."""
    seen = []
    call = networks.BatchNorm.call

    def recording(layer, x, training=False):
        seen.append((layer, tf.cast(x, tf.float32).numpy()))
        return call(layer, x, training)

    networks.BatchNorm.call = recording
    try:
        net.predict(latent, training=False)
    finally:
        networks.BatchNorm.call = call
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint folder with its replay buffer")
    parser.add_argument("--batches", type=int, default=8, help="batches of the run's size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    config = checkpoint.config
    net = load_model(checkpoint, config.env_id, config)
    buffer = ReplayBuffer.load(os.path.join(checkpoint.path, "buffer"), config)
    rng = np.random.default_rng(args.seed)
    statistics = [v for v in net.variables if "moving" in v.path]
    saved = [v.numpy() for v in statistics]
    depths = config.unroll_steps + 1
    sizes, shifts, spreads, value_gaps, logit_gaps = ([[] for _ in range(depths)]
                                                      for _ in range(5))
    for _ in range(args.batches):
        batch = buffer.sample(config.batch_size, rng)
        inference = unrolled_latents(net, config, batch, training=False)
        for k, latent in enumerate(inference):
            sizes[k].append(float(np.sqrt(np.mean(np.square(latent.numpy())))))
            layers = f_batch_norm_inputs(net, latent)
            shifts[k].append([])
            spreads[k].append([])
            for layer, x in layers:
                channels = x.reshape(-1, x.shape[-1])
                std = np.sqrt(layer.moving_variance.numpy() + networks.NORM_EPSILON)
                shifts[k][-1].append(np.median(np.abs(channels.mean(0)
                                                      - layer.moving_mean.numpy()) / std))
                spreads[k][-1].append(np.median(channels.std(0) / std))
        value_inference = [net.predict(latent, training=False) for latent in inference]
        training = unrolled_latents(net, config, batch, training=True)
        for k, latent in enumerate(training):
            value_logits, policy_logits = net.predict(latent, training=True)
            value_gaps[k].append(float(np.mean(np.abs(
                np.asarray(net.value_support.to_scalar(value_logits))
                - np.asarray(net.value_support.to_scalar(value_inference[k][0]))))))
            logit_gaps[k].append(float(np.mean(np.abs(
                np.asarray(policy_logits) - np.asarray(value_inference[k][1])))))
        for variable, value in zip(statistics, saved):
            variable.assign(value)
    names = [layer.name for layer, _ in layers]
    print(f"{args.checkpoint}: {args.batches} batches of {config.batch_size}; f's BatchNorm "
          f"layers in call order: {', '.join(names)}")
    print("depth  latent rms  median |d| per layer  median r per layer  |Δ value|  |Δ logit|")
    for k in range(depths):
        shift = " ".join(f"{x:.2f}" for x in np.mean(shifts[k], axis=0))
        spread = " ".join(f"{x:.2f}" for x in np.mean(spreads[k], axis=0))
        print(f"  {k}  {np.mean(sizes[k]):8.2f}  {shift}  {spread}  {np.mean(value_gaps[k]):.4f}"
              f"  {np.mean(logit_gaps[k]):.4f}")


if __name__ == "__main__":
    main()
