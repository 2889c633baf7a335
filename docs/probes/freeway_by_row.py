"""MinAtar Freeway: what a checkpoint knows about the chicken's height. Over random-play states,
binned by the chicken's row (9 = the bottom, where every crossing starts; 0 = the top), it prints
the network's value v(o), the prior over (no-op, up, down) and the one-step Q gap between up and
no-op, Q(a) = r(s, a) + γ v(g(s, a)) from the dynamics.

    python docs/probes/freeway_by_row.py <run>/checkpoints/ckpt-<updates> [...] [--states 3000]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
from evaluate import load_model  # noqa: E402
from minatar_action_gap import random_play_states  # noqa: E402

CHICKEN_CHANNEL = 0                      # MinAtar Freeway's channel order: chicken, car, speed1..5
NOOP, UP = 0, 1                          # its minimal action set: no-op, up, down
SEED = 1


def by_row(path: str, states: int) -> None:
    checkpoint = checkpoints.load_checkpoint(path)
    config = checkpoint.config
    model = load_model(checkpoint, config.env_id, config)
    observations = random_play_states(config.env_id, config, states, SEED)
    newest = observations[..., -observations.shape[-1] // config.frame_stack:]   # newest frame
    row = newest[..., CHICKEN_CHANNEL].reshape(len(observations), -1, 10).max(axis=2).argmax(axis=1)
    root = model.initial_inference(observations)
    prior = np.exp(root.policy_logits - root.policy_logits.max(axis=1, keepdims=True))
    prior /= prior.sum(axis=1, keepdims=True)
    q = []
    for action in range(prior.shape[1]):
        step = model.recurrent_inference(root.state, np.full(len(observations), action))
        q.append(step.reward + config.discount * step.value)
    q = np.stack(q, axis=1)
    print(path)
    for r in sorted(set(row.tolist())):
        here = row == r
        print(f"  row {r}: {here.sum():5d} states  value {root.value[here].mean():.3f}  prior "
              f"{np.round(prior[here].mean(axis=0), 2)}  Q(up) - Q(no-op) "
              f"{(q[here, UP] - q[here, NOOP]).mean():+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders of a Freeway run")
    parser.add_argument("--states", type=int, default=3000, help="random-play states")
    args = parser.parse_args()
    for path in args.checkpoints:
        by_row(path, args.states)


if __name__ == "__main__":
    main()
