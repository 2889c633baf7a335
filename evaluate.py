"""Evaluation of a trained agent: greedy Gumbel search, raw scores, human-normalised score, video.

Protocol: evaluation envs never end an episode on a life loss, rewards are raw, the cap is
`eval_max_episode_steps` (27,000 env steps = 108K frames on Atari), and the search runs without
Gumbel noise, so the action is the argmax of logits + sigma(q) among the most-visited root actions.

    python evaluate.py --checkpoint runs/<run>                 # newest checkpoint of a run
    python evaluate.py --checkpoint runs/<run>/checkpoints/ckpt-00100000 --episodes 10 --video
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import checkpoints  # noqa: E402
from config import Config  # noqa: E402

# envs (gymnasium, ALE), networks (TensorFlow) and cv2 are imported inside the functions that use
# them: they take seconds to load, and usage errors and --help are answered before.
EXIT_USAGE = 2
VIDEO_SIDE = 384          # frames are upscaled by a whole factor to about this many pixels a side
VIDEO_FPS = 15            # one video frame per agent step (4 emulator frames at 60 Hz on Atari)


class EpisodeResults(NamedTuple):
    returns: list[float]              # raw (unclipped) game returns
    lengths: list[int]                # env steps per game
    initial_values: list[float]       # the search's root value at each game's first step
    discounted_returns: list[float]   # Σ_t γ^t u_t of each game's training rewards u_t (clipped
                                      # where training clips): what an exact value would predict
                                      # at the first step, less what lies past a truncation
    action_counts: list[list[int]]    # how often each game played each discrete action ([] for
                                      # continuous actions): a greedy Breakout agent that never
                                      # presses FIRE shows here


def evaluation_config(config: Config, final: bool) -> Config:
    """`config` with the episode cap of an evaluation during training (train.py): the protocol's
    `eval_max_episode_steps` for the final one, `interim_eval_max_episode_steps` (if set) before."""
    if final or not config.interim_eval_max_episode_steps:
        return config
    return dataclasses.replace(config,
                               eval_max_episode_steps=config.interim_eval_max_episode_steps)


def play_episodes(model, config: Config, env_id: str, num_episodes: int, seed: int,
                  video_path: str | None = None) -> EpisodeResults:
    """Play `num_episodes` evaluation games in lockstep with greedy search;
    optionally film game 0."""
    import envs

    spec = envs.env_spec(env_id, config)
    rng = np.random.default_rng(seed)        # the sampled search's draws (continuous actions)
    games = [envs.make_env(env_id, seed + i, False, config) for i in range(num_episodes)]
    stacker = envs.FrameStacker(num_episodes, spec.frame_shape, config.frame_stack,
                                spec.frame_dtype)
    for i, env in enumerate(games):
        frame, _ = env.reset(seed=seed + i)
        stacker.reset(i, frame)
    # The Control Suite is filmed after play, from game 0's recorded physics states, in a process
    # without TensorFlow (MuJoCo's EGL renderer and TensorFlow crash in one process).
    physics_states = ([games[0].unwrapped.physics.get_state().copy()]
                      if video_path and spec.kind == "dmc" else None)
    video = (_open_video(video_path, frame, spec.kind)
             if video_path and physics_states is None else None)
    returns: list[float | None] = [None] * num_episodes
    lengths = [0] * num_episodes
    initial_values: list[float] = []
    discounted_returns = [0.0] * num_episodes
    action_counts = [[0] * (0 if spec.action_dims else spec.num_actions)
                     for _ in range(num_episodes)]
    running = list(range(num_episodes))
    while running:
        observations = stacker.observations()[running]
        searched = search_to_act(model, observations, config, rng, training=False)
        if not initial_values:
            initial_values = [float(value) for value in searched.root_value]
        still_running = []
        for row, i in enumerate(running):
            if spec.action_dims:
                action = searched.action[row]
            else:
                action = int(searched.action[row])
                action_counts[i][action] += 1
            frame, reward, terminated, truncated, info = games[i].step(action)
            discounted_returns[i] += (config.discount ** lengths[i]
                                      * envs.training_reward(reward, config.clip_rewards))
            lengths[i] += 1
            if i == 0 and video is not None:
                _write_video_frame(video, frame, spec.kind)
            if i == 0 and physics_states is not None:
                physics_states.append(games[0].unwrapped.physics.get_state().copy())
            if "game_return" in info:
                returns[i], lengths[i] = float(info["game_return"]), int(info["game_length"])
            elif terminated or truncated:
                raise RuntimeError("an evaluation episode ended without its game return")
            else:
                stacker.push(i, frame)
                still_running.append(i)
        running = still_running
    if video is not None:
        video.release()
    if physics_states is not None:
        film_control_suite(env_id, np.stack(physics_states), config.action_repeat, video_path)
    return EpisodeResults([float(r) for r in returns], lengths, initial_values, discounted_returns,
                          action_counts)


def search_to_act(model, observations: np.ndarray, config: Config, rng: np.random.Generator,
                  training: bool):
    """The acting search for observations [B, ...]: Gumbel search over discrete actions (mcts.py;
    Gumbel noise from `rng` in training, none in evaluation) or the sampled search over continuous
    ones (mcts_sampled.py; widened candidates in training). Its output has action [B] or [B, A],
    root_value [B] and improved_policy [B, ...]."""
    if model.action_dims:
        from mcts_sampled import sampled_search_actions

        return sampled_search_actions(model, observations, config.sampled_search_options(), rng,
                                      explore=training)
    from mcts import search_actions

    if training:
        return search_actions(model, observations, config.search_options(), rng,
                              config.gumbel_scale)
    return search_actions(model, observations, config.search_options(), None, gumbel_scale=0.0)


def video_rgb(frame: np.ndarray, kind: str) -> np.ndarray:
    """One env frame as the RGB picture of a video frame [H', W', 3] uint8, upscaled by a whole
    factor to about VIDEO_SIDE pixels: Atari RGB as it is, grayscale repeated, MinAtar one colour
    per channel."""
    import cv2

    import envs

    if kind == "minatar":
        rgb = envs.minatar_rgb(frame)
    else:
        rgb = frame if frame.shape[-1] == 3 else np.repeat(frame, 3, axis=-1)
    scale = max(1, VIDEO_SIDE // max(frame.shape[:2]))
    return cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def film_control_suite(env_id: str, states: np.ndarray, action_repeat: int, path: str) -> None:
    """Film a Control Suite game from its physics states [T + 1, *] (one per decision) with
    MuJoCo's offscreen renderer (EGL, headless), in a child process without TensorFlow; raises
    ValueError with one line where rendering is impossible."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    saved = os.environ.get("MUJOCO_GL")
    os.environ["MUJOCO_GL"] = "egl"                  # read by the child as it imports dm_control
    try:
        child = context.Process(target=_render_control_suite,
                                args=(env_id, states, action_repeat, path, errors))
        child.start()
    finally:
        if saved is None:
            del os.environ["MUJOCO_GL"]
        else:
            os.environ["MUJOCO_GL"] = saved
    child.join()
    if child.exitcode != 0:
        reason = errors.get() if not errors.empty() else f"exit code {child.exitcode}"
        raise ValueError(f"cannot film '{env_id}' with MuJoCo's EGL renderer ({reason}); it "
                         "needs libEGL and Mesa (Debian: libegl1 libgl1-mesa-dri)")


def _render_control_suite(env_id: str, states: np.ndarray, action_repeat: int, path: str,
                          errors) -> None:
    """The child of `film_control_suite`: a frame of VIDEO_SIDE pixels per physics state."""
    try:
        import cv2
        from dm_control import suite

        domain, task = env_id.split("/", 1)[1].rsplit("-", 1)[0].split("-", 1)
        env = suite.load(domain, task)
        env.reset()
        fps = 1.0 / (env.control_timestep() * action_repeat)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (VIDEO_SIDE, VIDEO_SIDE))
        if not writer.isOpened():
            raise OSError(f"cannot write video '{path}'")
        for state in states:
            with env.physics.reset_context():
                env.physics.set_state(state)
            rgb = env.physics.render(VIDEO_SIDE, VIDEO_SIDE, camera_id=0)
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        writer.release()
    except Exception as error:                  # one line for the parent's message
        errors.put(f"{type(error).__name__}: {error}".splitlines()[0])
        raise SystemExit(1) from None


def _open_video(path: str, frame: np.ndarray, kind: str):
    import cv2

    if kind == "vector":
        raise ValueError("--video needs an image-observation (Atari or MinAtar) environment")
    height, width = video_rgb(frame, kind).shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (width, height))
    if not writer.isOpened():
        raise ValueError(f"cannot write video '{path}'")
    _write_video_frame(writer, frame, kind)
    return writer


def _write_video_frame(writer, frame: np.ndarray, kind: str) -> None:
    import cv2

    writer.write(cv2.cvtColor(video_rgb(frame, kind), cv2.COLOR_RGB2BGR))


def summarize(env_id: str, returns: list[float]) -> dict:
    """Mean, std, median, min, max and the human-normalised mean (Atari only) of raw returns."""
    import envs

    scores = np.asarray(returns, np.float64)
    summary = {"episodes": len(returns), "mean": float(scores.mean()), "std": float(scores.std()),
               "median": float(np.median(scores)), "min": float(scores.min()),
               "max": float(scores.max())}
    normalized = envs.human_normalized_score(env_id, summary["mean"])
    if normalized is not None:
        summary["human_normalized"] = float(normalized)
    return summary


def result_record(env_id: str, result: EpisodeResults) -> dict:
    """`summarize`'s scores and every per-game field of `result`: what eval/eval-*.json (train.py)
    and `--json` hold."""
    return {**summarize(env_id, result.returns), **result._asdict()}


def load_model(checkpoint: checkpoints.Checkpoint, env_id: str, config: Config,
               weights: str = "online"):
    """A network of a checkpoint (`weights`: "online", "selfplay" or "target"), checked against the
    env's observation and action shapes."""
    import envs
    from networks import build_network

    spec = envs.env_spec(env_id, config)
    model = build_network(config, spec)
    checkpoints.check_weights_match(model.get_weights(), checkpoint.arrays.get(weights, []),
                                    f"{weights} weights")
    model.set_weights(checkpoint.arrays[weights])
    return model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate an EfficientZero V2 checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation games (default 10)")
    parser.add_argument("--env", default=None, help="environment (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    parser.add_argument("--video", nargs="?", const="", default=None, metavar="PATH",
                        help="write an mp4 of the first episode "
                             "(default PATH: beside the checkpoint)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the scores as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
        checkpoint = checkpoints.load_checkpoint(args.checkpoint)
        config = checkpoint.config
        env_id = args.env or config.env_id
        model = load_model(checkpoint, env_id, config)
        video_path = None
        if args.video is not None:
            video_path = args.video or os.path.join(checkpoint.path, "evaluation.mp4")
        result = play_episodes(model, config, env_id, args.episodes, args.seed, video_path)
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    summary = result_record(env_id, result)
    line = (f"{env_id}: {summary['mean']:.2f} ± {summary['std']:.2f} over {args.episodes} "
            f"episodes; median {summary['median']:.2f}, min {summary['min']:.2f}, "
            f"max {summary['max']:.2f}")
    if "human_normalized" in summary:
        line += f"; human-normalised {summary['human_normalized']:.3f}"
    print(line)
    if any(result.action_counts):
        shares = np.sum(result.action_counts, axis=0) / np.sum(result.action_counts)
        print("actions played: " + ", ".join(f"{a}: {share:.2f}" for a, share in enumerate(shares)))
    if video_path:
        print(f"video: {video_path}")
    if args.json:
        try:
            with open(args.json, "w") as file:
                json.dump({"checkpoint": checkpoint.path, "env_id": env_id,
                           **summary}, file, indent=1)
        except OSError as error:
            print(f"error: cannot write '{args.json}': {error.strerror or error}", file=sys.stderr)
            return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
