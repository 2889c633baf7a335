"""Why does a MinAtar Breakout checkpoint lose its balls? A probe of the greedy evaluation.

    python docs/probes/minatar_greedy_probe.py --checkpoint RUN_DIR --simulations 8,16,32
    python docs/probes/minatar_greedy_probe.py --checkpoint RUN_DIR --replay 0 --last 8

The first form plays the run's own evaluation games (the 30 games of `train.py`'s evaluations: the
same env seeds, greedy search without Gumbel noise) once per simulation count and prints the sorted
scores, so a deeper search can be compared with the one the run trained and evaluated with. The
second replays one of those games with the run's own settings and prints the last boards before the
episode ends, each with the action taken, the root value v(s) of f, the search value (SVE), the
root's completed Q per action and the prior. Boards: P paddle, O ball, t the ball's trail, # brick.
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)                 # the project's modules, without PYTHONPATH

import checkpoints  # noqa: E402
import envs  # noqa: E402
from evaluate import load_model, play_episodes  # noqa: E402
from mcts import search_with_model  # noqa: E402
from train import EVAL_SEED_OFFSET  # noqa: E402

BOARD_SYMBOLS = "POt#"        # MinAtar Breakout's channels: paddle, ball, trail, brick
ACTION_NAMES = ("NOOP", "LEFT", "RIGHT")


def board(frame: np.ndarray) -> list[str]:
    """A [10, 10, 4] Breakout frame as ten text rows (a cell shows its first channel that is on)."""
    return ["".join(BOARD_SYMBOLS[cell.argmax()] if cell.any() else "." for cell in cells)
            for cells in frame]


def replay(model, config, game: int, last: int) -> None:
    """Play evaluation game `game` greedily and print its last `last` boards before the end."""
    seed = config.seed + EVAL_SEED_OFFSET + game
    spec = envs.env_spec(config.env_id, config)
    env = envs.make_env(config.env_id, seed, False, config)
    stacker = envs.FrameStacker(1, spec.frame_shape, config.frame_stack, spec.frame_dtype)
    frame, _ = env.reset(seed=seed)
    stacker.reset(0, frame)
    steps, score = [], 0.0
    while True:
        root = model.initial_inference(stacker.observations())
        searched = search_with_model(model, root, np.zeros_like(root.policy_logits),
                                     **config.search_options())       # greedy: no Gumbel noise
        prior = np.exp(root.policy_logits[0] - root.policy_logits[0].max())
        action = int(searched.action[0])
        steps.append((frame, score, action, float(root.value[0]), float(searched.root_value[0]),
                      searched.completed_q[0], prior / prior.sum()))
        frame, reward, _, _, info = env.step(action)
        score += reward
        if "game_return" in info:
            break
        stacker.push(0, frame)
    print(f"game {game}: return {info['game_return']:g} in {info['game_length']} steps")
    for frame, score, action, value, search_value, completed_q, prior in steps[-last:]:
        print(f"score {score:g}, {ACTION_NAMES[action]}: v {value:.2f}, SVE {search_value:.2f}, "
              f"Q {np.round(completed_q, 2)}, prior {np.round(prior, 2)}")
        print("\n".join(board(frame)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder")
    parser.add_argument("--simulations", default="", help="comma-separated simulation counts")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--replay", type=int, default=None, help="an evaluation game to replay")
    parser.add_argument("--last", type=int, default=8, help="boards printed before the end")
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint)
    config = checkpoint.config
    if config.env_id != "MinAtar/Breakout-v1":
        parser.error(f"a MinAtar Breakout checkpoint is needed, this one is {config.env_id}")
    model = load_model(checkpoint, config.env_id, config)
    for simulations in (int(n) for n in args.simulations.split(",") if n):
        start = time.perf_counter()
        searched_config = dataclasses.replace(config, num_simulations=simulations)
        result = play_episodes(model, searched_config, config.env_id, args.episodes,
                               seed=config.seed + EVAL_SEED_OFFSET)
        print(f"{simulations} simulations: mean {np.mean(result.returns):.2f}, scores "
              f"{sorted(int(r) for r in result.returns)} ({time.perf_counter() - start:.0f} s)")
    if args.replay is not None:
        replay(model, config, args.replay, args.last)


if __name__ == "__main__":
    main()
