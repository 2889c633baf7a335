"""MinAtar Freeway: does a checkpoint dodge cars? It plays greedy evaluation games (the run's
search, no Gumbel noise) and, at every step where the chicken can move, asks the game itself what
"up" and "no-op" would do next: a *danger* step is one where up runs into a car (the chicken is sent
back to the bottom row) and no-op does not. Danger is *in view* when the car already stands in the
chicken's column of the row above, and *timed* when the car is about to move there, which depends
on the car's move timer, not shown in a frame. It prints the games' scores beside those of always
pressing up on the same seeds, how often the agent pressed up at danger steps and elsewhere, and the
network's one-step Q gap Q(no-op) - Q(up), Q(a) = r(s, a) + γ v(g(s, a)), at both kinds of step,
and, at danger steps, v(g(s, a)) beside the value v(h(o'_a)) of the real next observation after
up and after no-op: whether the dynamics foresee the collision that the representation sees.
Then, on two games of always pressing up, the value v(h(o)) by the chicken's row beside the run's
own n-step TD target there (Σ γ^i u over td_steps plus γ^n v(h(o_{t+n}))): how far the value
tells a chicken near its crossing from one at the bottom.
Without a checkpoint it plays two scripted players: always up, and a look-ahead player that asks a
copy of the game whether up (then three no-ops) runs into a car, and if so waits or steps down.

    python docs/probes/freeway_dodge.py <run>/checkpoints/ckpt-<updates> [...] [--games 8]
    python docs/probes/freeway_dodge.py <checkpoint> --set q_normalization=node   # the same network
                                                                     # under other search settings
    python docs/probes/freeway_dodge.py --games 30 --seed 10000000   # the scripted players, on the
                                                                     # seeds of seed 0's evaluations
"""

import argparse
import copy
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import envs  # noqa: E402
from config import apply_overrides  # noqa: E402
from evaluate import load_model  # noqa: E402
from mcts import search_actions  # noqa: E402

NOOP, UP, DOWN = 0, 1, 2                 # the minimal action set
GAME_ACTION = {NOOP: 0, UP: 2, DOWN: 4}  # their indices in MinAtar's full action set
BOTTOM_ROW = 9
CHICKEN_COLUMN = 4
CHICKEN_PERIOD = 3                       # the chicken moves at most once in this many steps
SEED = 10_000                            # the games' seeds are SEED, SEED + 1, ...


def freeway_game(env):
    """The MinAtar Freeway game object (chicken row `pos`, `move_timer`) under the wrappers."""
    while not hasattr(env, "game"):
        env = env.env
    return env.game.env


def collides(game, action: int, steps: int = 1) -> bool:
    """Whether `action`, then no-ops up to `steps` steps in all, sends the chicken back to the
    bottom without a crossing."""
    trial = copy.deepcopy(game)
    for step in range(steps):
        row = trial.pos
        reward, _ = trial.act(GAME_ACTION[action if step == 0 else NOOP])
        if reward:
            return False
        if trial.pos == BOTTOM_ROW and row != BOTTOM_ROW:
            return True
    return False


def frame_after(game, action: int) -> np.ndarray:
    """The frame [10, 10, C] uint8 0/255 that `action` leads to, on a copy of the game."""
    trial = copy.deepcopy(game)
    trial.act(GAME_ACTION[action])
    return trial.state().astype(np.uint8) * 255


def always_up(game) -> int:
    return UP


def look_ahead(game) -> int:
    """Up unless up (then no-ops until the chicken may move again) runs into a car; then no-op
    if that is safe, else down."""
    if game.move_timer != 0 or not collides(game, UP, CHICKEN_PERIOD):
        return UP
    return NOOP if not collides(game, NOOP, CHICKEN_PERIOD) else DOWN


def scripted_scores(player, env_id: str, config, games: int, seed: int) -> list[float]:
    """The scores of a scripted player (game -> action), in the evaluation protocol."""
    scores = []
    for i in range(games):
        env = envs.make_env(env_id, seed + i, False, config)
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(player(freeway_game(env)))
            total, done = total + reward, terminated or truncated
        scores.append(total)
    return scores


def value_by_row(model, config, games: int, seed: int) -> None:
    """Prints v(h(o)) and the n-step TD target by the chicken's row over `games` always-up games."""
    rows, values, targets = [], [], []
    n, discount = config.td_steps, config.discount
    for i in range(games):
        env = envs.make_env(config.env_id, seed + i, False, config)
        frame, _ = env.reset(seed=seed + i)
        stacker = envs.FrameStacker(1, frame.shape, config.frame_stack, frame.dtype)
        stacker.reset(0, frame)
        game_rows, observations, rewards, done = [], [stacker.observations()[0]], [], False
        while not done:
            game_rows.append(freeway_game(env).pos)
            frame, reward, terminated, truncated, _ = env.step(UP)
            stacker.push(0, frame)
            observations.append(stacker.observations()[0])
            rewards.append(reward)
            done = terminated or truncated
        value = model.initial_inference(np.stack(observations)).value
        powers = discount ** np.arange(n)
        for t in range(len(rewards) - n):        # positions whose n steps lie inside the game
            rows.append(game_rows[t])
            values.append(value[t])
            targets.append(np.dot(powers, rewards[t:t + n]) + discount ** n * value[t + n])
    rows, values, targets = np.array(rows), np.array(values), np.array(targets)
    print(f"  value by the chicken's row ({games} always-up games): row, steps, v(h(o)), "
          f"{n}-step TD target")
    for row in range(1, BOTTOM_ROW + 1):
        at = rows == row
        print(f"    {row}  {at.sum():5d}  {values[at].mean():.3f}  {targets[at].mean():.3f}")


def dodge(path: str, games: int, seed: int, overrides: list[str]) -> None:
    checkpoint = checkpoints.load_checkpoint(path)
    config = apply_overrides(checkpoint.config, overrides)
    model = load_model(checkpoint, config.env_id, config)
    spec = envs.env_spec(config.env_id, config)
    players = [envs.make_env(config.env_id, seed + i, False, config) for i in range(games)]
    stacker = envs.FrameStacker(games, spec.frame_shape, config.frame_stack, spec.frame_dtype)
    for i, env in enumerate(players):
        frame, _ = env.reset(seed=seed + i)
        stacker.reset(i, frame)
    scores = np.zeros(games)
    kinds = ("danger in view", "danger timed", "other")
    pressed_up = {kind: [] for kind in kinds}
    q_gap = {kind: [] for kind in kinds}
    # At danger steps: v(g(s, a)) and the real next observation o'_a of up and no-op.
    danger_values = {UP: [], NOOP: []}
    danger_observations = {UP: [], NOOP: []}
    channels = spec.frame_shape[-1]
    running = list(range(games))
    while running:
        observations = stacker.observations()[running]
        searched = search_actions(model, observations, config.search_options(), None,
                                  gumbel_scale=0.0)
        root = model.initial_inference(observations)
        q = [model.recurrent_inference(root.state, np.full(len(running), a)) for a in (NOOP, UP)]
        gap = [(s.reward + config.discount * s.value) for s in q]
        still_running = []
        for row, i in enumerate(running):
            game = freeway_game(players[i])
            if game.move_timer == 0 and game.pos != BOTTOM_ROW:
                kind = "other"
                if collides(game, UP) and not collides(game, NOOP):
                    in_view = any(car[0] == CHICKEN_COLUMN and car[1] == game.pos - 1
                                  for car in game.cars)
                    kind = "danger in view" if in_view else "danger timed"
                    for action, step in ((NOOP, q[0]), (UP, q[1])):
                        danger_values[action].append(float(step.value[row]))
                        danger_observations[action].append(np.concatenate(
                            [observations[row][..., channels:], frame_after(game, action)], -1))
                pressed_up[kind].append(int(searched.action[row]) == UP)
                q_gap[kind].append(float(gap[0][row] - gap[1][row]))
            frame, reward, terminated, truncated, _ = players[i].step(int(searched.action[row]))
            scores[i] += reward
            if not (terminated or truncated):
                stacker.push(i, frame)
                still_running.append(i)
        running = still_running
    print(" ".join([path, *overrides]))
    print(f"  scores {scores.tolist()} (mean {scores.mean():.2f}); always up on the same seeds "
          f"{np.mean(scripted_scores(always_up, config.env_id, config, games, seed)):.2f}")
    for kind in kinds:
        print(f"  {kind:14s} steps {len(q_gap[kind]):6d}: pressed up "
              f"{np.mean(pressed_up[kind]):.3f}  Q(no-op) - Q(up) {np.mean(q_gap[kind]):+.4f} "
              f"(sd {np.std(q_gap[kind]):.4f})")
    print("  at danger steps, does g see the collision? mean v(g(s, a)) beside v(h(o'_a)) of the "
          "real next observation")
    for action, name in ((UP, "up"), (NOOP, "no-op")):
        real = model.initial_inference(np.stack(danger_observations[action])).value
        print(f"    {name:5s}  v(g(s, a)) {np.mean(danger_values[action]):.3f}  "
              f"v(h(o'_a)) {np.mean(real):.3f}")
    value_by_row(model, config, 2, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*",
                        help="checkpoint folders of a Freeway run (none: scripted players)")
    parser.add_argument("--games", type=int, default=8, help="evaluation games per checkpoint")
    parser.add_argument("--seed", type=int, default=SEED, help="the first game's seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of config.py to change in the checkpoint's config (the "
                             "search's, e.g. q_normalization=node); repeatable")
    args = parser.parse_args()
    if not args.checkpoints:
        for player in (always_up, look_ahead):
            scores = scripted_scores(player, "MinAtar/Freeway-v1", None, args.games, args.seed)
            print(f"{player.__name__.replace('_', ' ')}: mean {np.mean(scores):.2f} (range "
                  f"{min(scores):.0f} to {max(scores):.0f}) over {args.games} games")
    for path in args.checkpoints:
        dodge(path, args.games, args.seed, args.set)


if __name__ == "__main__":
    main()
