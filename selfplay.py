"""Self-play: a set of envs stepped in lockstep, each action chosen by the acting search (Gumbel
search over discrete actions, mcts.py, blog topic ①; the sampled search over continuous ones,
mcts_sampled.py), as the official code's data workers play (ez/worker/data_worker.py).

`LockstepGames` holds some of the run's `num_envs` envs (a contiguous range of their indices), a
frame stack for each and the self-play model. The trainer plays all of them in its own process; with
`ray_selfplay_actors` = A each Ray actor plays one A-th of them (ray_actors.py). Either way one
`step` is one decision of every env, and what it returns goes to the replay buffer in env order.
Games are restarted by the caller, who owns the game counter and so the seed of each new game.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

import envs
from config import Config
from evaluate import search_to_act


class EndedGame(NamedTuple):
    """A self-play game that ended in a step: its env, return and length (env steps)."""
    env_index: int
    game_return: float
    game_length: int


class SelfPlayStep(NamedTuple):
    """One lockstep decision of N envs (N = the envs played, in index order)."""
    action: np.ndarray             # [N] int (discrete) or [N, A] float32 (continuous)
    reward: np.ndarray             # [N] float32
    next_frame: np.ndarray         # [N, *frame_shape]: the frame after the action
    terminated: np.ndarray         # [N] bool
    truncated: np.ndarray          # [N] bool
    root_value: np.ndarray         # [N] float32: the search's value of the root
    improved_policy: np.ndarray    # [N, actions] (discrete) or [N, 0] (continuous: not stored)
    ended: tuple                   # EndedGame for each game that ended, in env order
    search_seconds: float          # wall time of the acting search


def concatenate_steps(steps: list[SelfPlayStep]) -> SelfPlayStep:
    """The steps of consecutive env ranges as one step of all of them; the searches ran side by
    side, so the search time is the longest one."""
    arrays = [np.concatenate(parts) for parts in zip(*(step[:7] for step in steps))]
    return SelfPlayStep(*arrays, sum((step.ended for step in steps), ()),
                        max(step.search_seconds for step in steps))


class LockstepGames:
    """Envs `first_env` .. `first_env` + len(seeds) - 1 of a run, made with the game seeds `seeds`,
    their frame stacks and the self-play `model`. `rng_for(decision)` gives the random stream of
    the acting search at a decision (the number of lockstep steps before it)."""

    def __init__(self, config: Config, spec, model, first_env: int, seeds: list[int],
                 rng_for: Callable[[int], np.random.Generator]):
        self.config, self.spec, self.model = config, spec, model
        self.first_env, self.rng_for = first_env, rng_for
        self.envs = [envs.make_env(config.env_id, seed, True, config) for seed in seeds]
        self.stacker = envs.FrameStacker(len(seeds), spec.frame_shape, config.frame_stack,
                                         spec.frame_dtype)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def start(self, env_indices: list[int], seeds: list[int]) -> np.ndarray:
        """Start a game in each of the envs `env_indices` (the run's indices) with `seeds`; returns
        their first frames [len(env_indices), *frame_shape]."""
        first_frames = []
        for index, seed in zip(env_indices, seeds):
            local = index - self.first_env
            frame, _ = self.envs[local].reset(seed=seed)
            self.stacker.reset(local, frame)
            first_frames.append(frame)
        return np.stack(first_frames)

    def step(self, decision: int) -> SelfPlayStep:
        """One action in every env, chosen by the acting search on the stacked frames. An env whose
        game ends keeps its last stack until the caller starts the next game."""
        start = time.perf_counter()
        search = search_to_act(self.model, self.stacker.observations(), self.config,
                               self.rng_for(decision), training=True)
        search_seconds = time.perf_counter() - start
        count = len(self.envs)
        rewards = np.zeros(count, np.float32)
        terminated = np.zeros(count, bool)
        truncated = np.zeros(count, bool)
        next_frames, ended = [], []
        for i, env in enumerate(self.envs):
            frame, rewards[i], terminated[i], truncated[i], info = env.step(
                search.action[i] if self.spec.action_dims else int(search.action[i]))
            next_frames.append(frame)
            if "game_return" in info:
                ended.append(EndedGame(self.first_env + i, info["game_return"],
                                       info["game_length"]))
            if not (terminated[i] or truncated[i]):
                self.stacker.push(i, frame)
        policies = (np.zeros((count, 0), np.float32) if self.spec.action_dims
                    else search.improved_policy)
        return SelfPlayStep(np.asarray(search.action), rewards, np.stack(next_frames), terminated,
                            truncated, np.asarray(search.root_value), policies, tuple(ended),
                            search_seconds)
