"""How far does one reanalysis move the policy targets from the prior, for several floors of the
official tree normalisation's Q range (`value_delta_max`)? On a checkpoint that holds its replay
buffer (the newest checkpoint of a run), with its target model, as the run's next update would:

- `policy_improvement_kl`: mean KL(improved policy ‖ prior) over the reanalysed roots (nats);
- `improved_policy_entropy` against `prior_entropy`, and the mean best-minus-second completed Q.

    python docs/probes/reanalysis_floor_screen.py --env MinAtar/Asterix-v1 \\
        <run>/checkpoints/ckpt-<updates> [--floors 0.01 0.1 0.3] [--batches 4]
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
from buffer import ReplayBuffer  # noqa: E402
from evaluate import load_model  # noqa: E402
from targets import reanalyze  # noqa: E402

KEYS = ("policy_improvement_kl", "improved_policy_entropy", "prior_entropy", "root_q_gap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint folder that holds its replay buffer")
    parser.add_argument("--env", required=True)
    parser.add_argument("--floors", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--batches", type=int, default=4, help="batches sampled (seeds 0..n-1)")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(checkpoints.resolve_checkpoint(args.checkpoint))
    if checkpoint.buffer_path is None:
        raise SystemExit(f"error: '{checkpoint.path}' holds no replay buffer (only a run's newest "
                         "checkpoint does)")
    target = load_model(checkpoint, args.env, checkpoint.config, weights="target")
    buffer = ReplayBuffer.load(checkpoint.buffer_path, checkpoint.config)
    updates = checkpoint.state["updates"]
    print(f"{checkpoint.path}: {updates} updates; means over {args.batches} batches")
    for floor in args.floors:
        config = dataclasses.replace(checkpoint.config, value_delta_max=floor)
        search_rng = np.random.default_rng(0)
        runs = [reanalyze(buffer.sample(config.batch_size, np.random.default_rng(seed)), target,
                          config=config, updates=updates, rng=search_rng).diagnostics
                for seed in range(args.batches)]
        print(f"value_delta_max {floor:g}: " + ", ".join(
            f"{key} {np.mean([run['diagnostics/' + key] for run in runs]):.3f}" for key in KEYS))


if __name__ == "__main__":
    main()
