"""Environments: the Atari 100K protocol (Kaiser et al. 2020, as EZ V2 evaluates), MinAtar (Young &
Tian 2019, the CPU-scale Atari), plain vector-observation gymnasium tasks and the DeepMind Control
Suite.

Atari (`'Breakout'` or `'ALE/Breakout-v5'`): `ALE/<Game>-v5` with `frameskip=1` and
`repeat_action_probability=0` — the Atari 100K benchmark (as in
Dopamine's 100K config and the EZ papers) uses no sticky actions — and the minimal action set;
`gymnasium.wrappers.AtariPreprocessing` gives frame skip 4 with a max over the last two frames, up
to 30 random no-ops at a reset and 96x96 RGB frames (cv2
INTER_AREA, as the official code's WarpFrame). On top, `_Game` implements:
- training: a lost life ends the episode (`terminated`), and the next `reset()` continues the same
  game (EpisodicLife semantics), so every state stays reachable; rewards are sign-clipped;
- evaluation: lives never end an episode, rewards are raw;
- with `fire_on_life_start` (a switch; off in the official code): FIRE is pressed by the env when a
  game starts and after each lost life, so the agent never faces a serve (in training it replaces
  the no-op that continues a game after a lost life; elsewhere its step counts in the game's length
  and return);
- both: `info["raw_reward"]` is the unclipped reward of every step; when the game really ends (game
  over or the step cap) `info["game_return"]` (raw, summed over all lives) and `info["game_length"]`
  (agent steps) are set; the cap counts agent steps of a whole game (3,000 in training,
  27,000 = 108K frames in evaluation) and ends it as `truncated`.

MinAtar (`'MinAtar/Breakout-v1'`, also Asterix, Freeway, Seaquest, SpaceInvaders; `-v1` has the
minimal action set): the game's own rules, sticky actions (probability 0.1) and difficulty ramping,
unchanged. Its observation is a 10x10 grid of C binary channels (one per object kind); frames are
uint8 with 0 and 255, so the network's pixel scaling maps them to exactly 0 and 1. Rewards are 0 or
1 and a game is one episode (no lives); the step caps above apply as they do to Atari.

The DeepMind Control Suite (`'dm_control/<domain>-<task>-v0'`, e.g. `dm_control/walker-stand-v0`,
as shimmy registers the suite's tasks; EZ V2's continuous-control benchmark): the flattened state
(float32), actions in [-1, 1]^A, each held for `action_repeat` control steps with their rewards
summed (2, as the official code's dmc2gym set-up); the suite's own limit of 1,000 control steps
ends an episode as a truncation. Their env steps are control steps (`config.steps_per_transition`).
A gymnasium vector task with a Box action (Pendulum-v1) takes the same continuous path, its action
rescaled to [-1, 1]^A, unless `continuous_action_bins` discretises it.

Frames are returned one at a time (uint8 [96, 96, 3], or [96, 96, 1] grayscale; uint8 [10, 10, C]
for MinAtar; float32 [D] for vector tasks). `FrameStacker` and the replay buffer stack `frame_stack`
of them along the last axis, oldest first: channels s*C:(s+1)*C of an observation hold frame s
(vectors are concatenated the same way).
"""

from __future__ import annotations

import difflib
import functools
import os
from typing import NamedTuple

import gymnasium as gym
import numpy as np

import config as config_module
from config import DMC_PREFIX, Config

# Human and random-policy scores of the Atari 100K games (Ye
# et al. 2021, Table 3; Kaiser et al. 2020).
ATARI_SCORES = {  # game: (random, human)
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3), "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0), "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}


class EnvSpec(NamedTuple):
    frame_shape: tuple           # one frame: (H, W, C) uint8 for Atari,
                                 # (D,) float32 for vector tasks
    observation_shape: tuple     # frame_stack frames stacked along the last axis
    num_actions: int
    kind: str                    # 'atari', 'minatar', 'vector' or 'dmc'
    frame_dtype: type
    action_dims: int = 0         # continuous actions: the dimensions A of [-1, 1]^A (0: discrete)


MINATAR_PREFIX = "MinAtar/"
# Distinct colours (RGB) of a MinAtar video, one per channel; a cell shows its highest set channel.
MINATAR_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                            [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                            [210, 245, 60], [250, 190, 212]], np.uint8)


def _registered_ids() -> list[str]:
    import ale_py

    gym.register_envs(ale_py)
    return list(gym.registry)


def _minatar_ids() -> list[str]:
    """The registered MinAtar ids (the minatar package registers them on request; importing it is
    slow, so only MinAtar ids pay for it)."""
    if not any(i.startswith(MINATAR_PREFIX) for i in gym.registry):
        from minatar.gym import register_envs

        register_envs()
    return sorted(i for i in gym.registry if i.startswith(MINATAR_PREFIX))


def _dmc_ids() -> list[str]:
    """The Control Suite's tasks as shimmy names them (importing dm_control is slow: only DMC ids
    pay for it)."""
    # No OpenGL backend, whatever the shell says: stepping needs none, and with MUJOCO_GL=egl
    # loading dm_control beside TensorFlow 2.21 made its next graph call crash the process (a
    # segmentation fault; tests/test_envs.py runs that sequence).
    os.environ["MUJOCO_GL"] = "disable"
    import shimmy
    from dm_control import suite

    gym.register_envs(shimmy)
    return sorted(f"{DMC_PREFIX}{domain}-{task}-v0" for domain, task in suite.ALL_TASKS)


def _atari_game(env_id: str) -> str | None:
    """'Breakout' or 'ALE/Breakout-v5' -> 'Breakout' if it is an ALE game, else None."""
    name = env_id[4:] if env_id.startswith("ALE/") else env_id
    name = name.split("-v")[0]
    return name if f"ALE/{name}-v5" in _registered_ids() else None


def _unknown(env_id: str) -> ValueError:
    if env_id.startswith(MINATAR_PREFIX):
        known = _minatar_ids()
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ValueError(f"unknown MinAtar environment '{env_id}'{hint}: choose from "
                          f"{', '.join(i for i in known if i.endswith('-v1'))}")
    if env_id.startswith(DMC_PREFIX):
        known = _dmc_ids()
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ValueError(f"unknown Control Suite task '{env_id}'{hint}: choose from "
                          f"{', '.join(i[len(DMC_PREFIX):-3] for i in known)} "
                          f"(as {DMC_PREFIX}<domain>-<task>-v0)")
    games = sorted({i[4:].split("-v")[0] for i in _registered_ids() if i.startswith("ALE/")})
    close = difflib.get_close_matches(env_id.replace("ALE/", "").split("-v")[0], games, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown environment '{env_id}'{hint}: name an Atari game as 'Breakout' or "
                      "'ALE/Breakout-v5', a gymnasium id such as 'CartPole-v1' or a Control Suite "
                      "task such as 'dm_control/walker-stand-v0'")


def stacked_shape(frame_shape: tuple, frame_stack: int) -> tuple:
    """Shape of `frame_stack` frames stacked along the last axis."""
    return (*frame_shape[:-1], frame_shape[-1] * frame_stack)


@functools.lru_cache(maxsize=None)
def env_spec(env_id: str, config: Config) -> EnvSpec:
    """Frame and observation shapes and the action count, without stepping the env."""
    game = _atari_game(env_id)
    if game is not None:
        frame_shape = (config.frame_size, config.frame_size, 1 if config.grayscale else 3)
        env = _make_ale(game, config)
        num_actions = int(env.action_space.n)
        env.close()
        return EnvSpec(frame_shape, stacked_shape(frame_shape, config.frame_stack), num_actions,
                       "atari", np.uint8)
    if env_id.startswith(DMC_PREFIX):
        env = _make_dmc(env_id, config)
        frame_shape = tuple(int(d) for d in env.observation_space.shape)
        action_dims = int(env.action_space.shape[0])
        env.close()
        return EnvSpec(frame_shape, stacked_shape(frame_shape, config.frame_stack), 0, "dmc",
                       np.float32, action_dims)
    minatar = env_id.startswith(MINATAR_PREFIX)
    env = _make_minatar(env_id) if minatar else _make_vector(env_id, config)
    frame_shape = tuple(int(d) for d in env.observation_space.shape)
    continuous = isinstance(env.action_space, gym.spaces.Box)
    num_actions = 0 if continuous else int(env.action_space.n)
    action_dims = int(env.action_space.shape[0]) if continuous else 0
    env.close()
    return EnvSpec(frame_shape, stacked_shape(frame_shape, config.frame_stack), num_actions,
                   "minatar" if minatar else "vector", np.uint8 if minatar else np.float32,
                   action_dims)


def _make_ale(game: str, config: Config) -> gym.Env:
    from gymnasium.wrappers import AtariPreprocessing

    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0,
                   full_action_space=False)
    return AtariPreprocessing(env, noop_max=config.noop_max, frame_skip=config.frame_skip,
                              screen_size=config.frame_size, terminal_on_life_loss=False,
                              grayscale_obs=config.grayscale, grayscale_newaxis=True)


def _make_minatar(env_id: str) -> gym.Env:
    """A MinAtar game whose observations are uint8 0/255 frames [10, 10, C]."""
    if env_id not in _minatar_ids():
        raise _unknown(env_id)
    env = gym.make(env_id)
    space = env.observation_space
    frames = gym.spaces.Box(0, 255, space.shape, np.uint8)
    return gym.wrappers.TransformObservation(env, lambda o: np.asarray(o, np.uint8) * np.uint8(255),
                                             frames)


def minatar_rgb(frame: np.ndarray) -> np.ndarray:
    """A MinAtar frame [H, W, C] (0/255) -> RGB [H, W, 3] uint8: each cell in the colour of its
    highest set channel (MINATAR_PALETTE), black where no channel is set."""
    channels = frame.shape[-1]
    palette = np.concatenate([np.zeros((1, 3), np.uint8),
                              MINATAR_PALETTE[np.arange(channels) % len(MINATAR_PALETTE)]])
    top = np.max((frame > 0) * np.arange(1, channels + 1), axis=-1)       # [H, W], 0 = empty
    return palette[top]


def _make_vector(env_id: str, config: Config) -> gym.Env:
    if env_id not in _registered_ids():
        raise _unknown(env_id)
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as error:
        raise ValueError(f"cannot make environment '{env_id}': {error}") from None
    if isinstance(env.action_space, gym.spaces.Box) and len(env.action_space.shape) == 1:
        if config.continuous_action_bins:
            # Evenly spaced values of each dimension, one discrete action each.
            env = gym.wrappers.DiscretizeAction(env, bins=config.continuous_action_bins)
        else:
            env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    elif not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise ValueError(f"environment '{env_id}' has a {type(env.action_space).__name__} action "
                         "space; this project supports discrete actions and 1-D Box actions")
    if (not isinstance(env.observation_space, gym.spaces.Box)
            or len(env.observation_space.shape) != 1):
        env.close()
        raise ValueError(f"environment '{env_id}' needs a flat vector observation (a 1-D Box)")
    return env


class _ActionRepeat(gym.Wrapper):
    """Each action held for `repeat` control steps and their rewards summed (the official code's
    dmc2gym frame_skip); an end within the repeat ends the step."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            observation, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return observation, total, terminated, truncated, info


def _make_dmc(env_id: str, config: Config) -> gym.Env:
    """A Control Suite task: flattened float32 state, actions in [-1, 1]^A held for
    `action_repeat` control steps."""
    if env_id not in _dmc_ids():
        raise _unknown(env_id)
    env = gym.wrappers.FlattenObservation(gym.make(env_id))
    space = env.observation_space
    env = gym.wrappers.TransformObservation(
        env, lambda o: np.asarray(o, np.float32),
        gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32))
    return _ActionRepeat(env, config.action_repeat)


class _Game(gym.Wrapper):
    """Episode bookkeeping over a whole game: life loss, reward clipping, raw return, step cap."""

    def __init__(self, env: gym.Env, seed: int, training: bool, config: Config, is_atari: bool):
        super().__init__(env)
        self._seed = seed
        self._life_loss_ends_episode = training and is_atari and config.terminal_on_life_loss
        self._clip = training and config.clip_rewards
        self._cap = config.max_episode_steps if training else config.eval_max_episode_steps
        self._is_atari = is_atari
        meanings = env.unwrapped.get_action_meanings() if is_atari else []
        self._fire = (meanings.index("FIRE") if config.fire_on_life_start and "FIRE" in meanings
                      else None)
        self._game_over = True
        self._lives = 0
        self._game_return = 0.0
        self._game_length = 0

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives()) if self._is_atari else 0

    def reset(self, *, seed=None, options=None):
        if not self._game_over:
            # The previous episode ended with a lost life: continue the same game with one no-op
            # (or FIRE, `fire_on_life_start`).
            frame, _, terminated, truncated, info = self.env.step(
                0 if self._fire is None else self._fire)
            self._lives = self._ale_lives()
            if not (terminated or truncated):
                return frame, info
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        frame, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        self._lives = self._ale_lives()
        self._game_return, self._game_length = 0.0, 0
        if self._fire is not None:
            frame, reward, _, _, info = self.env.step(self._fire)
            self._game_return += float(reward)
            self._game_length += 1
        return frame, info

    def step(self, action):
        frame, reward, terminated, truncated, info = self.env.step(action)
        raw = float(reward)
        lives = self._ale_lives()
        if (self._fire is not None and not self._life_loss_ends_episode and not terminated
                and 0 < lives < self._lives):
            # A life was lost and the episode goes on (evaluation): the env serves, and the step
            # returns both steps' rewards.
            self._game_length += 1
            frame, reward, terminated, truncated, info = self.env.step(self._fire)
            raw += float(reward)
            lives = self._ale_lives()
        self._game_return += raw
        self._game_length += 1
        info = dict(info, raw_reward=raw)
        if self._game_length >= self._cap and not terminated:
            truncated = True
        game_over = terminated or truncated
        if not game_over and self._life_loss_ends_episode and 0 < lives < self._lives:
            terminated = True                # a lost life ends the training episode, not the game
        self._lives = lives
        if game_over:
            self._game_over = True
            info["game_return"] = self._game_return
            info["game_length"] = self._game_length
        return frame, training_reward(raw, self._clip), terminated, truncated, info


def training_reward(raw: float, clip: bool) -> float:
    """The reward the learner sees: the raw reward's sign where training clips rewards (`clip`:
    `config.clip_rewards` in a training env), else the raw reward."""
    return float(np.sign(raw)) if clip else float(raw)


def make_env(env_id: str, seed: int, training: bool, config: Config | None = None) -> gym.Env:
    """An env yielding single frames under the protocol above (`training` selects the variant)."""
    game = _atari_game(env_id)
    if config is None:
        if game is not None:
            config = config_module.atari100k()
        elif env_id.startswith(MINATAR_PREFIX):
            config = config_module.minatar()
        else:
            config = config_module.classic()
    if game is not None:
        env = _make_ale(game, config)
    elif env_id.startswith(MINATAR_PREFIX):
        env = _make_minatar(env_id)
    elif env_id.startswith(DMC_PREFIX):
        env = _make_dmc(env_id, config)
    else:
        env = _make_vector(env_id, config)
        env = gym.wrappers.TransformObservation(env, lambda o: np.asarray(o, np.float32),
                                                env.observation_space)
    env.action_space.seed(seed)
    return _Game(env, seed, training, config, game is not None)


def human_normalized_score(env_id: str, score: float) -> float | None:
    """(score - random) / (human - random) for the Atari 100K games; None for other envs."""
    game = _atari_game(env_id)
    if game not in ATARI_SCORES:
        return None
    random_score, human_score = ATARI_SCORES[game]
    return (score - random_score) / (human_score - random_score)


class FrameStacker:
    """The last `frame_stack` single frames of each of `num_envs` envs, stacked on demand."""

    def __init__(self, num_envs: int, frame_shape: tuple, frame_stack: int, dtype):
        self._frames = np.zeros((num_envs, frame_stack, *frame_shape), dtype)   # [E, S, *frame]
        self._stack = frame_stack

    def reset(self, env_index: int, first_frame: np.ndarray) -> None:
        """An episode start: every slot holds the first frame (as EfficientZero does)."""
        self._frames[env_index] = first_frame

    def push(self, env_index: int, frame: np.ndarray) -> None:
        self._frames[env_index, :-1] = self._frames[env_index, 1:]
        self._frames[env_index, -1] = frame

    def observations(self) -> np.ndarray:
        """[E, *stacked_shape], frames oldest -> newest along the last axis; a new array, never a
        view of the stacker (with one frame a reshape would be one, and the next push would
        overwrite what a caller kept)."""
        return np.concatenate([self._frames[:, s] for s in range(self._stack)], axis=-1)
