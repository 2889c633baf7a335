"""Does the dynamics still tell the actions apart? For each checkpoint (or a freshly initialised
network), over random-play states of a MinAtar game:

- g action difference: the largest mean |g(s, a) - g(s, b)| over action pairs, as a share of the
  mean |g(s, a)| (the latent's size), averaged over states;
- one-step Q range: max - min over actions of r(s, a) + γ v(g(s, a)), averaged over states;
- the root value and the prior's max - min logit, averaged over states.

    python docs/probes/minatar_action_gap.py --env MinAtar/Breakout-v1 \\
        [--fresh] [<run>/checkpoints/ckpt-<updates> ...]
"""

import argparse
import itertools
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import config as config_module  # noqa: E402
import envs  # noqa: E402
from evaluate import load_model  # noqa: E402


def random_play(env_id: str, config, seed: int, training: bool):
    """Uniformly random play, games restarted as they end: yields (env, observation) at each state,
    the observation the config's `frame_stack` newest frames; the env stays at that state until the
    next item is drawn."""
    env = envs.make_env(env_id, seed, training, config)
    spec = envs.env_spec(env_id, config)
    stacker = envs.FrameStacker(1, spec.frame_shape, config.frame_stack, spec.frame_dtype)
    rng = np.random.default_rng(seed)
    frame, _ = env.reset(seed=seed)
    stacker.reset(0, frame)
    while True:
        yield env, stacker.observations()[0]
        frame, _, terminated, truncated, _ = env.step(int(rng.integers(spec.num_actions)))
        if terminated or truncated:
            frame, _ = env.reset()
            stacker.reset(0, frame)
        else:
            stacker.push(0, frame)


def random_play_states(env_id: str, config, count: int, seed: int) -> np.ndarray:
    """`count` observations of uniformly random play (`random_play`)."""
    play = random_play(env_id, config, seed, training=True)
    return np.stack([observation for _, observation in itertools.islice(play, count)])


def action_gap(model, states: np.ndarray, num_actions: int, discount: float) -> dict:
    root = model.initial_inference(states)
    count = len(states)
    outputs = [model.recurrent_inference(root.state, np.full(count, a, np.int32))
               for a in range(num_actions)]
    latents = np.stack([output.state[0].reshape(count, -1) for output in outputs])   # [A, N, L]
    pair_differences = np.abs(latents[:, None] - latents[None]).mean(-1)               # [A, A, N]
    size = np.abs(latents).mean(-1).mean(0)                                            # [N]
    q = np.stack([output.reward + discount * output.value for output in outputs])     # [A, N]
    logits = root.policy_logits
    return {"g_action_difference_percent":
                float(100 * np.mean(pair_differences.max((0, 1)) / size)),
            "one_step_q_range": float(np.mean(q.max(0) - q.min(0))),
            "root_value": float(root.value.mean()),
            "prior_logit_gap": float(np.mean(logits.max(1) - logits.min(1)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--fresh", action="store_true",
                        help="also measure a freshly initialised network of the minatar preset")
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("checkpoints", nargs="*")
    args = parser.parse_args(argv)
    states_by_stack = {}          # one random play, stacked per checkpoint frame_stack
    models = []
    if args.fresh:
        import keras

        from networks import EfficientZeroNet

        config = config_module.minatar()
        keras.utils.set_random_seed(config.seed)
        spec = envs.env_spec(args.env, config)
        models.append(("fresh", config,
                       EfficientZeroNet(config, spec.observation_shape, spec.num_actions)))
    for path in args.checkpoints:
        checkpoint = checkpoints.load_checkpoint(path)
        models.append((path, checkpoint.config,
                       load_model(checkpoint, args.env, checkpoint.config)))
    for name, config, model in models:
        if config.frame_stack not in states_by_stack:
            states_by_stack[config.frame_stack] = random_play_states(args.env, config, args.states,
                                                                     args.seed)
        states = states_by_stack[config.frame_stack]
        num_actions = envs.env_spec(args.env, config).num_actions
        gap = action_gap(model, states, num_actions, config.discount)
        print(name, " ".join(f"{key}={value:.4g}" for key, value in gap.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
