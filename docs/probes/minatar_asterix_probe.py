"""What does a model know about MinAtar Asterix's next step? A probe of the one-step outcomes.

    python docs/probes/minatar_asterix_probe.py RUN_DIR/checkpoints/ckpt-00003000 [...]
    python docs/probes/minatar_asterix_probe.py --heuristic
    python docs/probes/minatar_asterix_probe.py --supervised [--danger-only] --set frame_stack=4
    python docs/probes/minatar_asterix_probe.py --offline RUN_DIR/checkpoints/ckpt-00003000 \\
        --updates 1500 [--set td_steps=5 ...]

States come from uniformly random play. At each state the game is copied once per action and the
copy stepped (no sticky action), so every action's true outcome is known: the game ends at once
(the player meets an enemy) or gold is collected. Danger states are those where some actions end
the game and others do not (about 7% of random-play states); gold states those where some action
collects gold. For each checkpoint the probe prints, over the danger states, how often the model's
one-step Q, r + γ v(g(h(o), a)), and its prior pick an action that survives, against the share of
surviving actions (chance), and the mean Q of the surviving actions minus that of the dying ones;
and the same for gold.

`--heuristic` scores uniformly random play and a player with one-step knowledge only (never
step next to an enemy in its row, walk towards gold) over 30 games: what knowing the next step is
worth.

`--supervised` asks whether the network can learn the danger at all, with nothing else to learn: a
fresh `minatar` network (`--set` overrides as in train.py, e.g. frame_stack=4) is trained on the
true outcomes only, v(g(h(o), a)) -> 1 if a survives and 0 if it ends the game (the learner's value
cross-entropy at unroll step 1, the preset's optimiser and gradient clipping), for a random action
of states drawn from all random-play states or only from the danger states (`--danger-only`), and
probed on held-out danger states every `REPORT_EVERY` updates.

`--offline` screens settings on fixed data: a fresh network trained by the learner's whole update
(sampling, reanalysis, priorities, model refreshes; no self-play) on the replay buffer saved with a
run's newest checkpoint, with that run's settings and the `--set` overrides, probed every
`REPORT_EVERY` updates.
random play comes from `docs/probes/minatar_action_gap.py`.
"""

import argparse
import copy
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import config as config_module  # noqa: E402
import envs  # noqa: E402
from evaluate import load_model  # noqa: E402
from minatar_action_gap import random_play as random_play_frames  # noqa: E402

ENV_ID = "MinAtar/Asterix-v1"
PROBE_STATES = 1500          # danger or gold states for the checkpoint probe
TRAIN_STATES = 20_000        # random-play states of the supervised probe ...
HELD_OUT_STATES = 3_000      # ... and its held-out states (their danger states are probed)
REPORT_EVERY = 500
HEURISTIC_GAMES = 30
# MinAtar Asterix (-v1, minimal action set): actions noop, left, up, right, down as (dy, dx); the
# player's rows are 1-8 and its columns 0-9. Channels: player, enemy, trail, gold.
MOVES = ((0, 0), (0, -1), (-1, 0), (0, 1), (1, 0))
PLAYER, ENEMY, GOLD = 0, 1, 3


def outcomes(env) -> tuple[np.ndarray, np.ndarray]:
    """Each action's true outcome from the env's current state: (ends the game [A] bool, collects
    gold and survives [A] bool), by stepping a copy of the game (its random state included)."""
    game = env.unwrapped.game.env                    # MinAtar's game, below the sticky-action layer
    ends, gold = [], []
    for action in env.unwrapped.action_set:
        reward, terminal = copy.deepcopy(game).act(action)
        ends.append(terminal)
        gold.append(reward > 0 and not terminal)
    return np.array(ends), np.array(gold)


def random_play(config, count: int, seed: int, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations [N, 10, 10, C·S] of uniformly random play with their outcomes [N, A] (ends,
    gold), for the first `count` states where keep(ends, gold) holds."""
    observations, all_ends, all_gold = [], [], []
    for env, observation in random_play_frames(ENV_ID, config, seed, training=False):
        if len(observations) == count:
            break
        ends, gold = outcomes(env)
        if keep(ends, gold):
            observations.append(observation)
            all_ends.append(ends)
            all_gold.append(gold)
    return np.stack(observations), np.stack(all_ends), np.stack(all_gold)


def is_danger(ends: np.ndarray) -> np.ndarray:
    """Some actions end the game and others do not ([..., A] -> [...])."""
    return ends.any(-1) & ~ends.all(-1)


def one_step_q(model, observations: np.ndarray, num_actions: int, discount: float):
    """(r + γ v(g(h(o), a)) [N, A], prior logits [N, A])."""
    root = model.initial_inference(observations)
    outputs = [model.recurrent_inference(root.state, np.full(len(observations), action, np.int32))
               for action in range(num_actions)]
    q = np.stack([output.reward + discount * output.value for output in outputs], axis=1)
    return q, root.policy_logits


def choice_report(scores: np.ndarray, good: np.ndarray) -> tuple[float, float, float]:
    """Over states, how often argmax(scores) is a good action, the share of good actions (chance),
    and the mean score of the good actions minus that of the others."""
    picked = good[np.arange(len(good)), scores.argmax(1)]
    gap = (scores * good).sum(1) / good.sum(1) - (scores * ~good).sum(1) / (~good).sum(1)
    return float(picked.mean()), float(good.mean()), float(gap.mean())


def outcome_report(model, states, discount: float) -> str:
    """The danger and gold choices of a model's one-step Q and prior on `states`."""
    observations, ends, gold = states
    q, logits = one_step_q(model, observations, ends.shape[1], discount)
    danger, golden = is_danger(ends), gold.any(1)
    q_safe, chance, gap = choice_report(q[danger], ~ends[danger])
    prior_safe, _, _ = choice_report(logits[danger], ~ends[danger])
    q_gold, gold_chance, gold_gap = choice_report(q[golden], gold[golden])
    prior_gold, _, _ = choice_report(logits[golden], gold[golden])
    return (f"{danger.sum()} danger states: Q picks a surviving action {q_safe:.2f}, the prior "
            f"{prior_safe:.2f} (chance {chance:.2f}), Q gap {gap:+.3f}; "
            f"{golden.sum()} gold states: Q picks gold {q_gold:.2f}, the prior {prior_gold:.2f} "
            f"(chance {gold_chance:.2f}), Q gap {gold_gap:+.3f}")


def probe_states(config):
    return random_play(config, PROBE_STATES, seed=7,
                       keep=lambda ends, gold: is_danger(ends) or gold.any())


def probe_checkpoints(paths: list[str]) -> None:
    states = None
    for path in paths:
        checkpoint = checkpoints.load_checkpoint(path)
        model = load_model(checkpoint, ENV_ID, checkpoint.config)
        if states is None:
            states = probe_states(checkpoint.config)
        print(f"{path}: {outcome_report(model, states, checkpoint.config.discount)}")


def offline(path: str, overrides: list[str], updates: int) -> None:
    """A fresh network trained by the learner's whole update (sampling, reanalysis, priorities,
    model refreshes) on the replay buffer saved with checkpoint `path`, with no self-play."""
    import tempfile

    from buffer import ReplayBuffer
    from train import Trainer

    checkpoint = checkpoints.load_checkpoint(path)
    if checkpoint.buffer_path is None:
        raise SystemExit(f"error: checkpoint '{path}' holds no replay buffer (only a run's newest "
                         "checkpoint does)")
    config = config_module.apply_overrides(checkpoint.config, overrides)
    states = probe_states(config)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir, None)
        trainer.buffer = ReplayBuffer.load(checkpoint.buffer_path, config)
        print(f"{len(trainer.buffer)} transitions of {path}; overrides {overrides or 'none'}")
        while trainer.updates < updates:
            trainer.update_once()
            if trainer.updates % REPORT_EVERY == 0:
                print(f"{trainer.updates} updates: "
                      f"{outcome_report(trainer.online, states, config.discount)}", flush=True)
        trainer.close()


def supervised(overrides: list[str], updates: int, danger_only: bool) -> None:
    import keras
    import tensorflow as tf

    from learner import build_optimizer, configure_tensorflow
    from networks import EfficientZeroNet, scalar_to_two_hot, scalar_transform

    config = config_module.apply_overrides(config_module.minatar(),
                                           [f"env_id={ENV_ID}", *overrides])
    configure_tensorflow(config)
    keras.utils.set_random_seed(config.seed)
    start = time.perf_counter()
    everything = lambda ends, gold: True                             # noqa: E731
    observations, ends, _ = random_play(config, TRAIN_STATES, seed=1, keep=everything)
    held_out, held_out_ends, _ = random_play(config, HELD_OUT_STATES, seed=2, keep=everything)
    danger = is_danger(held_out_ends)
    held_out, held_out_ends = held_out[danger], held_out_ends[danger]
    pool = np.flatnonzero(is_danger(ends)) if danger_only else np.arange(len(observations))
    print(f"{len(observations)} training states ({is_danger(ends).mean():.1%} danger), "
          f"{len(held_out)} held-out danger states; drawing from {len(pool)}")
    spec = envs.env_spec(ENV_ID, config)
    net = EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
    optimizer = build_optimizer(config)

    @tf.function
    def update(observation, action, survives):
        with tf.GradientTape() as tape:
            latent = net.represent(net.preprocess(observation), training=True)
            next_latent, _, _ = net.dynamics(latent, action, net.initial_lstm_state(len(action)),
                                             training=True)
            value_logits, _ = net.predict(next_latent, training=True)
            target = scalar_to_two_hot(scalar_transform(survives), config.support_size,
                                       config.support_scale)
            loss = tf.reduce_mean(-tf.reduce_sum(target * tf.nn.log_softmax(value_logits), -1))
        gradients = tape.gradient(loss, net.trainable_variables)
        gradients, _ = tf.clip_by_global_norm(gradients, config.max_grad_norm)
        optimizer.apply_gradients(zip(gradients, net.trainable_variables))

    rng = np.random.default_rng(config.seed)
    for step in range(1, updates + 1):
        rows = pool[rng.integers(len(pool), size=config.batch_size)]
        actions = rng.integers(spec.num_actions, size=config.batch_size).astype(np.int32)
        update(observations[rows], actions, (~ends[rows, actions]).astype(np.float32))
        if step % REPORT_EVERY == 0:
            q, _ = one_step_q(net, held_out, spec.num_actions, config.discount)
            safe, chance, gap = choice_report(q, ~held_out_ends)
            print(f"{step} updates: Q picks a surviving action {safe:.2f} (chance {chance:.2f}), "
                  f"Q gap {gap:+.3f} ({time.perf_counter() - start:.0f} s)")


def heuristic_action(frame: np.ndarray, rng: np.random.Generator) -> int:
    """One-step knowledge only: avoid a square with an enemy within one column in its row, and
    among the rest step towards the nearest gold (ties broken at random)."""
    player_y, player_x = np.argwhere(frame[:, :, PLAYER])[0]
    gold = np.argwhere(frame[:, :, GOLD])
    scores = []
    for dy, dx in MOVES:
        y, x = min(8, max(1, player_y + dy)), min(9, max(0, player_x + dx))
        enemies = np.flatnonzero(frame[y, :, ENEMY])
        score = -10.0 * np.sum(np.abs(enemies - x) <= 1)
        if len(gold):
            score -= 0.1 * np.min(np.abs(gold[:, 0] - y) + np.abs(gold[:, 1] - x))
        scores.append(score + 0.01 * rng.random())
    return int(np.argmax(scores))


def heuristic_scores() -> None:
    """Mean score of uniformly random play and of `heuristic_action` over HEURISTIC_GAMES games."""
    config = config_module.minatar()
    rng = np.random.default_rng(0)
    players = {"random": lambda frame: int(rng.integers(len(MOVES))),
               "one-step heuristic": lambda frame: heuristic_action(frame, rng)}
    for name, act in players.items():
        returns, lengths = [], []
        for game in range(HEURISTIC_GAMES):
            env = envs.make_env(ENV_ID, game, False, config)
            frame, _ = env.reset(seed=game)
            while True:
                frame, _, _, _, info = env.step(act(frame))
                if "game_return" in info:
                    returns.append(info["game_return"])
                    lengths.append(info["game_length"])
                    break
        print(f"{name}: mean score {np.mean(returns):.2f} over {HEURISTIC_GAMES} games "
              f"(mean length {np.mean(lengths):.0f} steps)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--supervised", action="store_true")
    parser.add_argument("--danger-only", action="store_true")
    parser.add_argument("--heuristic", action="store_true",
                        help="score random play and a one-step heuristic over 30 games")
    parser.add_argument("--offline", metavar="CHECKPOINT",
                        help="train a fresh network on this checkpoint's replay buffer")
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        if args.heuristic:
            heuristic_scores()
        if args.supervised:
            supervised(args.overrides, args.updates, args.danger_only)
        if args.offline:
            offline(args.offline, args.overrides, args.updates)
        if args.checkpoints:
            probe_checkpoints(args.checkpoints)
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
