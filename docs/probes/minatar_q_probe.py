"""Can the dynamics g learn what an action does on MinAtar Breakout?
A supervised probe of the model.

    python docs/probes/minatar_q_probe.py --optimizer sgd --learning-rate 0.1 --updates 1500
    python docs/probes/minatar_q_probe.py --optimizer adam --learning-rate 0.001 --updates 1200

Random play gives the true action values Q(s, a) of the uniform policy: the mean discounted return
of (s, a) over every visit of exactly that frame, for the frames seen at least `--min-visits` times
with each action. The `minatar` preset's network (h, g, f) is then trained on the same transitions
by plain regression, v(g(h(o_t), a_t)) -> G_{t+1} (the value cross-entropy of the learner at unroll
step 1, nothing else), with the optimiser under test, gradient clipping and weight decay as in
training; `--consistency-coeff c` adds the learner's SimSiam term for that step, c times the
negative cosine between P2(P1(g(h(o_t), a_t))) and the stop-gradient P1(h(o_{t+1})), and
`--value-coeff` weights the value term (the learner's is 0.25; 1 by default here). Every sixth of
the run it prints the model's one-step Q gap (max - min over actions of v(g(s, a))) beside the true
gap, and how often its best action is the true best where the true gap exceeds 0.1
(chance: one in three).
"""

import argparse
import dataclasses
import os
import sys
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import config as config_module  # noqa: E402
import envs  # noqa: E402

ENV_ID = "MinAtar/Breakout-v1"
CLEAR_GAP = 0.1                 # true gaps above this count for the best-action agreement
REPORTS = 6


def random_play(config, steps: int, seed: int):
    """Frames [N, 10, 10, C], next frames [N, 10, 10, C], actions [N], next-step returns G_{t+1} [N]
    and the true Q table."""
    env = envs.make_env(ENV_ID, seed, False, config)
    frame, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    frames, next_frames, actions, next_returns = [], [], [], []
    returns_of = defaultdict(list)                     # (frame bytes, action) -> returns G_t
    episode, rewards = [], []
    while len(frames) < steps:
        action = int(rng.integers(env.action_space.n))
        next_frame, reward, terminated, truncated, _ = env.step(action)
        episode.append((frame, action, next_frame))
        rewards.append(reward)
        frame = next_frame
        if terminated or truncated:
            returns = np.zeros(len(rewards) + 1)
            for t in reversed(range(len(rewards))):
                returns[t] = rewards[t] + config.discount * returns[t + 1]
            for t, (seen, taken, after) in enumerate(episode):
                frames.append(seen)
                next_frames.append(after)
                actions.append(taken)
                next_returns.append(returns[t + 1])
                returns_of[(seen.tobytes(), taken)].append(returns[t])
            episode, rewards = [], []
            frame, _ = env.reset()
    return (np.stack(frames), np.stack(next_frames), np.array(actions, np.int32),
            np.array(next_returns, np.float32), returns_of)


def true_action_values(returns_of, shape, num_actions: int, min_visits: int):
    """Frames [M, ...] seen at least min_visits times with every action, and their Q [M, A]."""
    per_frame = defaultdict(dict)
    for (key, action), returns in returns_of.items():
        if len(returns) >= min_visits:
            per_frame[key][action] = float(np.mean(returns))
    keys = [key for key, values in per_frame.items() if len(values) == num_actions]
    frames = np.stack([np.frombuffer(key, np.uint8).reshape(shape) for key in keys])
    return frames, np.array([[per_frame[key][a] for a in range(num_actions)] for key in keys])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=384, help="the learner's 64 samples x 6")
    parser.add_argument("--steps", type=int, default=200_000, help="random-play env steps")
    parser.add_argument("--min-visits", type=int, default=30)
    parser.add_argument("--consistency-coeff", type=float, default=0.0,
                        help="weight of the SimSiam term (the preset's is 2)")
    parser.add_argument("--value-coeff", type=float, default=1.0,
                        help="weight of the value term (the preset's is 0.25)")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from learner import build_optimizer
    from networks import EfficientZeroNet, scalar_to_two_hot

    config = config_module.minatar()
    spec = envs.env_spec(ENV_ID, config)
    frames, next_frames, actions, next_returns, returns_of = random_play(config, args.steps,
                                                                         args.seed)
    probe_frames, true_q = true_action_values(returns_of, spec.frame_shape, spec.num_actions,
                                              args.min_visits)
    true_gap = true_q.max(1) - true_q.min(1)
    clear = true_gap > CLEAR_GAP
    print(f"{len(probe_frames)} probe frames; true one-step Q gap: mean {true_gap.mean():.3f}, "
          f"{clear.mean():.0%} of them above {CLEAR_GAP}", flush=True)

    keras.utils.set_random_seed(args.seed)
    net = EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
    optimizer = build_optimizer(dataclasses.replace(config, optimizer=args.optimizer,
                                                    learning_rate=args.learning_rate))
    variables = net.trainable_variables

    @tf.function
    def update(observations, taken, targets, next_observations):
        with tf.GradientTape() as tape:
            latent = net.represent(net.preprocess(observations), training=True)
            next_latent, _, _ = net.dynamics(latent, taken,
                                             net.initial_lstm_state(tf.shape(taken)[0]),
                                             training=True, state_gradient_scale=1.0)
            value_logits, _ = net.predict(next_latent, training=True)
            loss = args.value_coeff * tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                scalar_to_two_hot(targets, config.support_size, config.support_scale),
                value_logits))
            if args.consistency_coeff > 0:
                prediction = net.predict_projection(net.project(next_latent, training=True),
                                                    training=True)
                target = tf.stop_gradient(net.project(
                    net.represent(net.preprocess(next_observations), training=True), training=True))
                cosine = tf.reduce_sum(tf.math.l2_normalize(prediction, -1)
                                       * tf.math.l2_normalize(target, -1), -1)
                loss -= args.consistency_coeff * tf.reduce_mean(cosine)
        gradients = [tf.zeros_like(v) if g is None else g
                     for g, v in zip(tape.gradient(loss, variables), variables)]
        gradients, _ = tf.clip_by_global_norm(gradients, config.max_grad_norm)
        optimizer.apply_gradients(
            zip([g + config.weight_decay * v for g, v in zip(gradients, variables)], variables))

    rng = np.random.default_rng(args.seed)
    start = time.time()
    for step in range(1, args.updates + 1):
        rows = rng.integers(len(frames), size=args.batch_size)
        update(frames[rows], actions[rows], next_returns[rows], next_frames[rows])
        if step % max(1, args.updates // REPORTS) == 0 or step == args.updates:
            root = net.initial_inference(probe_frames)
            model_q = np.stack([net.recurrent_inference(root.state,
                                                        np.full(len(probe_frames), a)).value
                                for a in range(spec.num_actions)], axis=1)
            gap = model_q.max(1) - model_q.min(1)
            agree = (model_q.argmax(1) == true_q.argmax(1))[clear].mean()
            print(f"{args.optimizer} lr {args.learning_rate:g} "
                  f"consistency {args.consistency_coeff:g} "
                  f"value {args.value_coeff:g} "
                  f"update {step}: model Q gap "
                  f"{gap.mean():.4f} (true {true_gap.mean():.3f}), best action agrees {agree:.0%} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
