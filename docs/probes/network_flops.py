"""What one update of a preset costs in floating-point operations, counted by TensorFlow's profiler
on the traced graphs: an initial and a recurrent inference per state, the learner's update
(forward and backward, one batch), and from them a full update (the reanalysis of a batch plus
the update plus its share of self-play searches).

    python docs/probes/network_flops.py [--config minatar] [--env MinAtar/Breakout-v1]
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import config as config_module  # noqa: E402
import envs  # noqa: E402
from learner import Learner  # noqa: E402
from networks import EfficientZeroNet  # noqa: E402
from targets import initial_inferences_per_sample  # noqa: E402


def graph_flops(function, *signature) -> int:
    """Floating-point operations of one call of `function` traced for `signature`
    (static shapes)."""
    graph = tf.function(function).get_concrete_function(*signature).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def update_flops(config) -> dict:
    spec = envs.env_spec(config.env_id, config)
    net = EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
    obs_dtype = tf.uint8 if net.is_image else tf.float32
    initial = graph_flops(net.initial_graph,
                          tf.TensorSpec([1, *spec.observation_shape], obs_dtype))
    state = net.initial_inference(np.zeros((1, *spec.observation_shape),
                                           obs_dtype.as_numpy_dtype)).state
    state_spec = [tf.TensorSpec([1, *s.shape[1:]], s.dtype) for s in state]
    recurrent = graph_flops(lambda *state: net.recurrent_graph(state[:-1], state[-1]),
                            *state_spec, tf.TensorSpec([1], tf.int32))
    learner = Learner(config, net, spec.observation_shape, spec.num_actions)
    learner_flops = graph_flops(learner.gradients.python_function,
                                *learner.gradients.input_signature)
    K, B = config.unroll_steps, config.batch_size
    # Reanalysis infers the bootstraps and the roots of the reanalysed share of the samples, and
    # searches those roots; a search makes num_simulations recurrent steps per root.
    reanalysis = (B * initial_inferences_per_sample(config) * initial
                  + config.num_simulations * config.reanalyze_ratio * B * (K + 1) * recurrent)
    selfplay = (initial + config.num_simulations * recurrent) / config.updates_per_env_step
    return {"initial_mflop_per_state": initial / 1e6,
            "recurrent_mflop_per_state": recurrent / 1e6,
            "learner_gflop_per_update": learner_flops / 1e9,
            "reanalysis_gflop_per_update": reanalysis / 1e9,
            "selfplay_gflop_per_update": selfplay / 1e9,
            "total_gflop_per_update": (reanalysis + learner_flops + selfplay) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="minatar", choices=sorted(config_module.PRESETS))
    parser.add_argument("--env", default=None, help="environment id (default: the preset's)")
    args = parser.parse_args()
    config = config_module.get_config(args.config)
    if args.env:
        config = dataclasses.replace(config, env_id=args.env)
    for key, value in update_flops(config).items():
        print(f"{key:30s} {value:.3f}")


if __name__ == "__main__":
    main()
