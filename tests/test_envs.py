"""The Atari 100K protocol and vector tasks of envs.py, and frame stacking."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

import config as cfg
import envs


def play_until(env, stop, seed=0, max_steps=5000):
    """Random actions until `stop(reward, terminated, truncated, info)`; returns the last step."""
    rng = np.random.default_rng(seed)
    for _ in range(max_steps):
        step = env.step(int(rng.integers(env.action_space.n)))
        if stop(*step[1:]):
            return step
    raise AssertionError("the stop condition never happened")


def test_atari_frames_and_spec():
    config = cfg.atari100k()
    spec = envs.env_spec("Breakout", config)
    assert spec == envs.EnvSpec((96, 96, 3), (96, 96, 12), 4, True, np.uint8)
    assert envs.env_spec("ALE/Breakout-v5", config) == spec
    env = envs.make_env("Breakout", 0, True, config)
    frame, _ = env.reset()
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    gray = dataclasses.replace(config, grayscale=True)
    assert envs.env_spec("Breakout", gray).observation_shape == (96, 96, 4)
    frame, _ = envs.make_env("Breakout", 0, True, gray).reset()
    assert frame.shape == (96, 96, 1)


def test_no_sticky_actions_and_same_seed_same_frames():
    config = cfg.atari100k()
    env = envs.make_env("Breakout", 3, True, config)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    runs = []
    for _ in range(2):
        env = envs.make_env("Breakout", 3, True, config)
        frames = [env.reset()[0]]
        for action in [1, 2, 3, 0, 2, 2, 3] * 10:
            frames.append(env.step(action)[0])
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_life_loss_ends_a_training_episode_but_continues_the_game():
    env = envs.make_env("Breakout", 0, True, cfg.atari100k())
    env.reset()
    _, _, terminated, truncated, info = play_until(env, lambda r, te, tr, i: te or tr)
    assert terminated and not truncated
    assert "game_return" not in info and info["lives"] == 4
    env.reset()
    assert env.unwrapped.ale.lives() == 4          # the same game goes on


def test_life_loss_does_not_end_an_evaluation_episode():
    env = envs.make_env("Breakout", 0, False, cfg.atari100k())
    env.reset()
    _, _, terminated, _, info = play_until(env, lambda r, te, tr, i: i["lives"] < 5 or te or tr)
    assert info["lives"] == 4 and not terminated
    _, _, terminated, _, info = play_until(env, lambda r, te, tr, i: te or tr)
    assert terminated and info["lives"] == 0 and "game_return" in info


class _FixedRewards(gym.Env):
    """A vector env paying rewards 3, -2, 0.5, 0 and then ending."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    rewards = [3.0, -2.0, 0.5, 0.0]

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), self.rewards[self.t - 1], self.t == 4, False, {}


def test_clipped_training_rewards_and_raw_rewards():
    config = dataclasses.replace(cfg.classic(), clip_rewards=True)
    results = {}
    for training in (True, False):
        env = envs._Game(_FixedRewards(), 0, training, config, is_atari=False)
        env.reset()
        steps = [env.step(0) for _ in range(4)]
        results[training] = [s[1] for s in steps]
        assert [s[4]["raw_reward"] for s in steps] == _FixedRewards.rewards
        assert steps[-1][4]["game_return"] == 1.5 and steps[-1][4]["game_length"] == 4
    assert results[True] == [1.0, -1.0, 1.0, 0.0]
    assert results[False] == _FixedRewards.rewards


@pytest.mark.parametrize("training", [True, False])
def test_step_cap_truncates_the_game(training):
    config = dataclasses.replace(cfg.atari100k(), max_episode_steps=7, eval_max_episode_steps=9)
    cap = 7 if training else 9
    env = envs.make_env("Breakout", 0, training, config)
    env.reset()
    for step in range(1, cap + 1):
        _, _, terminated, truncated, info = env.step(0)      # no-op: no life is lost this early
        assert not terminated
        assert truncated == (step == cap)
    assert info["game_length"] == cap and info["game_return"] == 0.0


def test_cartpole_vector_task():
    config = dataclasses.replace(cfg.classic(), max_episode_steps=20)
    spec = envs.env_spec("CartPole-v1", config)
    assert spec == envs.EnvSpec((4,), (4,), 2, False, np.float32)
    env = envs.make_env("CartPole-v1", 0, True, config)
    frame, _ = env.reset()
    assert frame.shape == (4,) and frame.dtype == np.float32
    length = 0
    while True:
        _, reward, terminated, truncated, info = env.step(length % 2)
        length += 1
        if terminated or truncated:
            break
    assert info["game_length"] == length <= 20 and info["game_return"] == float(length)


def test_frame_stacker_layout():
    stacker = envs.FrameStacker(2, (2, 2, 3), 4, np.uint8)
    stacker.reset(0, np.full((2, 2, 3), 1, np.uint8))
    stacker.reset(1, np.full((2, 2, 3), 7, np.uint8))
    stacker.push(0, np.full((2, 2, 3), 2, np.uint8))
    observations = stacker.observations()
    assert observations.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(observations[0, 0, 0], [1] * 9 + [2] * 3)
    np.testing.assert_array_equal(observations[1, 1, 1], [7] * 12)
    vectors = envs.FrameStacker(1, (2,), 3, np.float32)
    vectors.reset(0, np.array([1.0, 2.0], np.float32))
    vectors.push(0, np.array([3.0, 4.0], np.float32))
    np.testing.assert_array_equal(vectors.observations()[0], [1, 2, 1, 2, 3, 4])
    assert envs.stacked_shape((96, 96, 3), 4) == (96, 96, 12)


def test_human_normalized_score():
    assert envs.human_normalized_score("Breakout", 1.7) == 0.0
    assert envs.human_normalized_score("ALE/Breakout-v5", 30.5) == pytest.approx(1.0)
    assert envs.human_normalized_score("CartPole-v1", 200.0) is None


@pytest.mark.parametrize("env_id, message", [
    ("Brekout", "did you mean Breakout"), ("NoSuchTask-v0", "name an Atari game as 'Breakout'"),
    ("FrozenLake-v1", "flat vector observation")])
def test_bad_env_ids_fail_with_one_line(env_id, message):
    with pytest.raises(ValueError) as error:
        envs.make_env(env_id, 0, True)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError):
        envs.env_spec(env_id, cfg.atari100k())


def test_a_continuous_action_is_discretised_into_evenly_spaced_values():
    config = cfg.classic()
    spec = envs.env_spec("Pendulum-v1", config)
    assert spec.num_actions == config.continuous_action_bins == 5
    env = envs.make_env("Pendulum-v1", 3, True, config)
    reference = gym.make("Pendulum-v1")
    frame, _ = env.reset()
    expected, _ = reference.reset(seed=3)
    np.testing.assert_allclose(frame, expected)
    for action, torque in [(4, 1.6), (0, -1.6), (2, 0.0), (3, 0.8)]:
        frame, reward, *_ = env.step(action)
        expected, expected_reward, *_ = reference.step(np.array([torque], np.float32))
        np.testing.assert_allclose(frame, expected, rtol=1e-5, atol=1e-6)
        assert reward == pytest.approx(expected_reward, rel=1e-5, abs=1e-6)
