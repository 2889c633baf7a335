"""What one update of a preset costs in floating-point operations, counted by TensorFlow's profiler
on the traced graphs: an initial and a recurrent inference per state, the learner's update
(forward and backward, one batch), and from them a full update (the reanalysis of a batch plus
the update plus its share of self-play searches); `bench.preset_flops` counts them.

    python docs/probes/network_flops.py [--config minatar] [--env MinAtar/Breakout-v1]
"""

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import config as config_module  # noqa: E402
from bench import preset_flops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="minatar", choices=sorted(config_module.PRESETS))
    parser.add_argument("--env", default=None, help="environment id (default: the preset's)")
    args = parser.parse_args()
    config = config_module.get_config(args.config)
    if args.env:
        config = dataclasses.replace(config, env_id=args.env)
    for key, value in preset_flops(config).items():
        print(f"{key:30s} {value:.3f}")


if __name__ == "__main__":
    main()
