"""Does the greedy search overrule a CartPole checkpoint's prior where its own Q disagrees?

    python docs/probes/cartpole_search_override.py --checkpoint runs/<run>/checkpoints/ckpt-00004875

Plays `--games` greedy games (the evaluation's search without Gumbel noise, start seeds `--seed`,
`--seed` + 1, ...) and counts, over every step, how often the root's completed Q prefers the action
the prior (policy logits) does not, and in those states how often the played action followed Q. The
action is the argmax of logits + σ(q̂), σ = (c_visit + max N) · c_scale · q̂ at most
(c_visit + max N) · c_scale nats, so a prior more confident than that cannot be overruled.
`--c-scale` replays the same checkpoint with another c_scale.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import envs  # noqa: E402
from evaluate import load_model  # noqa: E402
from mcts import search_with_model  # noqa: E402

ENV_ID = "CartPole-v1"
MAX_STEPS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    parser.add_argument("--games", type=int, default=3, help="greedy games to play")
    parser.add_argument("--seed", type=int, default=1000, help="start seed of the first game")
    parser.add_argument("--c-scale", type=float, default=None, help="replace the run's c_scale")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    config = checkpoint.config
    if args.c_scale is not None:
        config = dataclasses.replace(config, c_scale=args.c_scale)
    model = load_model(checkpoint, ENV_ID, config)
    prior_choice, q_choice, played = [], [], []
    for game in range(args.games):
        env = envs.make_env(ENV_ID, args.seed + game, False, config)
        observation, _ = env.reset(seed=args.seed + game)
        for step in range(MAX_STEPS):  # noqa: B007 (read after the loop: the steps played)
            root = model.initial_inference(observation[None])
            search = search_with_model(model, root, np.zeros_like(root.policy_logits),
                                       **config.search_options())     # greedy: no Gumbel noise
            prior_choice.append(int(np.argmax(root.policy_logits[0])))
            q_choice.append(int(np.argmax(search.completed_q[0])))
            played.append(int(search.action[0]))
            observation, _, terminated, truncated, _ = env.step(played[-1])
            if terminated or truncated:
                break
        print(f"game {game} (start seed {args.seed + game}): {step + 1} steps")
    prior_choice, q_choice, played = map(np.array, (prior_choice, q_choice, played))
    disagree = q_choice != prior_choice
    print(f"{len(played)} steps; Q prefers the other action than the prior in {disagree.mean():.0%}"
          f" of them; there the played action followed Q in "
          f"{(played[disagree] == q_choice[disagree]).mean() if disagree.any() else 0:.0%}")


if __name__ == "__main__":
    main()
