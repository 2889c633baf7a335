"""Random play's score on each task of the README's results table: uniform random actions in the
evaluation protocol (envs.make_env with training=False), 30 games each, written to
docs/runs/random-play.json, which docs/results_table.py reads.

    python docs/random_play.py                       # every task, about 2 minutes
    python docs/random_play.py --env MinAtar/Freeway-v1
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import envs  # noqa: E402

TASKS = ("Breakout", "CartPole-v1", "Acrobot-v1", "MinAtar/Breakout-v1", "MinAtar/Asterix-v1",
         "MinAtar/Freeway-v1", "MinAtar/Seaquest-v1", "MinAtar/SpaceInvaders-v1", "Pendulum-v1",
         "dm_control/ball_in_cup-catch-v0", "dm_control/walker-stand-v0")
GAMES = 30
SEED = 10_000_000                     # train.py's EVAL_SEED_OFFSET: the evaluation games' seeds
OUTPUT = os.path.join(ROOT, "docs", "runs", "random-play.json")


def random_returns(env_id: str, games: int, seed: int) -> list[float]:
    """The raw game returns of `games` games of uniform random actions (uniform in the box of a
    continuous action)."""
    rng = np.random.default_rng(seed)
    returns = []
    for game in range(games):
        env = envs.make_env(env_id, seed + game, training=False)
        env.reset(seed=seed + game)
        total, done = 0.0, False
        while not done:
            space = env.action_space
            action = (rng.uniform(space.low, space.high).astype(np.float32)
                      if space.shape else int(rng.integers(space.n)))
            _, _, terminated, truncated, info = env.step(action)
            total += info["raw_reward"]
            done = terminated or truncated
        env.close()
        returns.append(total)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", action="append", help="a task (repeatable; default: all)")
    args = parser.parse_args()
    scores = {}
    if os.path.exists(OUTPUT):
        with open(OUTPUT) as file:
            scores = json.load(file)
    for env_id in args.env or TASKS:
        returns = random_returns(env_id, GAMES, SEED)
        scores[env_id] = {"games": GAMES, "mean": float(np.mean(returns)),
                          "std": float(np.std(returns))}
        print(f"{env_id}: {np.mean(returns):.2f} ± {np.std(returns):.2f} over {GAMES} games")
    with open(OUTPUT, "w") as file:
        json.dump(scores, file, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
