"""How far ahead does a CartPole checkpoint's value see, and how do its games end?

    python docs/probes/cartpole_value_horizon.py --checkpoint runs/<run>/checkpoints/ckpt-00004875

Plays `--games` greedy games (the evaluation's search, start seeds `--seed`, `--seed` + 1, ...) and
prints, for each, its length, where the cart and the pole were at the end (CartPole fails at
|x| > 2.4 or |θ| > 0.21 rad), the cart's position every `--every` steps, and beside it the search's
root value against the discounted return of the rest of the game, Σ_{i≥t} γ^(i−t) (CartPole pays 1
a step; a game cut at 500 steps is worth more than its return says, up to 1/(1 − γ) = 333). A value
far below the return cannot see how the game ends: a cart drifting off the track is then invisible
until it is too late.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import envs  # noqa: E402
from evaluate import load_model  # noqa: E402
from mcts import search_actions  # noqa: E402

ENV_ID = "CartPole-v1"
MAX_STEPS = 500


def play(model, config, seed: int):
    """One greedy game: the cart position [T] and the search's root value [T] before each step, the
    final cart position and pole angle, and whether the game terminated."""
    env = envs.make_env(ENV_ID, seed, False, config)
    frame, _ = env.reset(seed=seed)
    positions, root_values = [], []
    for _ in range(MAX_STEPS):
        searched = search_actions(model, frame[None], config.search_options(), None,
                                  gumbel_scale=0.0)
        positions.append(float(frame[0]))
        root_values.append(float(searched.root_value[0]))
        frame, _, terminated, truncated, _ = env.step(int(searched.action[0]))
        if terminated or truncated:
            break
    return np.array(positions), np.array(root_values), float(frame[0]), float(frame[2]), terminated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint or a run folder")
    parser.add_argument("--games", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000, help="start seed of the first game")
    parser.add_argument("--every", type=int, default=100, help="report every this many steps")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(checkpoints.resolve_checkpoint(args.checkpoint))
    config = checkpoint.config
    model = load_model(checkpoint, ENV_ID, config)
    gamma = config.discount
    for game in range(args.games):
        positions, root_values, final_x, final_angle, terminated = play(model, config,
                                                                        args.seed + game)
        length = len(positions)
        ending = "fell or left the track" if terminated else "reached the step cap"
        print(f"game {game}: {length} steps, {ending}; at the end x {final_x:+.2f}, "
              f"θ {final_angle:+.3f}")
        for t in range(0, length, args.every):
            rest = (1 - gamma ** (length - t)) / (1 - gamma)
            print(f"  step {t:3d}: x {positions[t]:+.2f}, root value {root_values[t]:6.1f}, "
                  f"discounted return of the rest {rest:6.1f}")


if __name__ == "__main__":
    main()
