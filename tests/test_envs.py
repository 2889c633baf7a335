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
    assert spec == envs.EnvSpec((96, 96, 3), (96, 96, 12), 4, "atari", np.uint8)
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


@pytest.mark.parametrize("training", [True, False])
def test_fire_on_life_start_serves_every_life(training):
    """Breakout needs FIRE to serve. Pressing no-op forever: with `fire_on_life_start` the env
    serves at the game's start and after each lost life, so the ball is lost five times and the
    game ends (in training as five episodes ended by a lost life, the last by game over);
    without it the ball never comes into play and the game runs to the step cap."""
    config = dataclasses.replace(cfg.atari100k(), max_episode_steps=2_000,
                                 eval_max_episode_steps=2_000)
    for fire, expected_episodes in ((True, 5), (False, 1)):
        env = envs.make_env("Breakout", 0, training, dataclasses.replace(
            config, fire_on_life_start=fire))
        episodes, info, truncated = 0, {}, False
        while "game_return" not in info:
            env.reset()
            episodes += 1
            terminated = truncated = False
            while not (terminated or truncated):
                _, _, terminated, truncated, info = env.step(0)
        assert episodes == (expected_episodes if training else 1)
        assert truncated != fire and info["lives"] == (0 if fire else 5)
        assert (info["game_length"] < 2_000) == fire


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
    assert spec == envs.EnvSpec((4,), (4,), 2, "vector", np.float32)
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


def test_frame_stacker_observations_survive_the_next_push():
    for frame_stack in (1, 3):
        stacker = envs.FrameStacker(1, (2, 2, 4), frame_stack, np.uint8)
        stacker.reset(0, np.zeros((2, 2, 4), np.uint8))
        kept = stacker.observations()
        stacker.push(0, np.ones((2, 2, 4), np.uint8))
        np.testing.assert_array_equal(kept, np.zeros((1, 2, 2, 4 * frame_stack), np.uint8))


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


def test_a_box_action_is_rescaled_to_the_unit_cube_for_the_sampled_search():
    config = cfg.classic()
    spec = envs.env_spec("Pendulum-v1", config)
    assert (spec.num_actions, spec.action_dims, spec.frame_shape) == (0, 1, (3,))
    env = envs.make_env("Pendulum-v1", 3, True, config)
    reference = gym.make("Pendulum-v1")
    env.reset()
    reference.reset(seed=3)
    for action, torque in [(1.0, 2.0), (-0.5, -1.0), (0.25, 0.5)]:
        frame, reward, *_ = env.step(np.array([action], np.float32))
        expected, expected_reward, *_ = reference.step(np.array([torque], np.float32))
        np.testing.assert_allclose(frame, expected, rtol=1e-5, atol=1e-6)
        assert reward == pytest.approx(expected_reward, rel=1e-5, abs=1e-6)


def test_a_continuous_action_is_discretised_into_evenly_spaced_values_on_request():
    config = dataclasses.replace(cfg.classic(), continuous_action_bins=5)
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


def test_a_control_suite_task_repeats_each_action_and_ends_by_truncation_at_1000_steps():
    config = cfg.classic()
    spec = envs.env_spec("dm_control/cartpole-swingup-v0", config)
    assert (spec.frame_shape, spec.kind, spec.action_dims, spec.frame_dtype) == (
        (5,), "dmc", 1, np.float32)
    env = envs.make_env("dm_control/cartpole-swingup-v0", 3, True,
                        dataclasses.replace(config, max_episode_steps=10_000))
    reference = gym.wrappers.FlattenObservation(gym.make("dm_control/cartpole-swingup-v0"))
    frame, _ = env.reset()
    expected, _ = reference.reset(seed=3)
    assert frame.dtype == np.float32
    np.testing.assert_array_equal(frame, expected.astype(np.float32))
    rng = np.random.default_rng(0)
    for step in range(1, 501):
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        frame, reward, terminated, truncated, info = env.step(action)
        expected_reward = 0.0
        for _ in range(config.action_repeat):                 # two control steps, rewards summed
            expected, control_reward, reference_terminated, reference_truncated, _ = (
                reference.step(action))
            expected_reward += control_reward
        np.testing.assert_array_equal(frame, expected.astype(np.float32))
        assert reward == pytest.approx(expected_reward, rel=1e-12)
        assert not terminated and truncated == (step == 500) == reference_truncated
    assert info["game_length"] == 500
    assert not reference_terminated


def test_tensorflow_runs_after_a_control_suite_task_loads_even_with_egl_asked_for():
    """With MUJOCO_GL=egl, dm_control's EGL libraries made TensorFlow's next graph call crash the
    process; envs.py loads the suite without an OpenGL backend."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np, tensorflow as tf, config, envs\n"
              "envs.make_env('dm_control/cartpole-swingup-v0', 0, True, config.classic()).reset()\n"
              "f = tf.function(lambda x: tf.nn.relu(x @ tf.ones((4, 4))))\n"
              "print(float(tf.reduce_sum(f(tf.ones((8, 4))))))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, MUJOCO_GL="egl", TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "128.0"


def test_an_unknown_control_suite_task_names_the_choices():
    with pytest.raises(ValueError) as error:
        envs.env_spec("dm_control/walker-stnd-v0", cfg.classic())
    message = str(error.value)
    assert "did you mean dm_control/walker-stand-v0" in message and "\n" not in message
    assert "ball_in_cup-catch" in message and "walker-walk" in message


# MinAtar (Young & Tian 2019): channels and minimal action sets of the five games.
MINATAR_GAMES = {"Breakout": (4, 3), "Asterix": (4, 5), "Freeway": (7, 3), "Seaquest": (10, 6),
                 "SpaceInvaders": (6, 4)}


@pytest.mark.parametrize("game", sorted(MINATAR_GAMES))
def test_minatar_specs(game):
    channels, actions = MINATAR_GAMES[game]
    spec = envs.env_spec(f"MinAtar/{game}-v1", cfg.minatar())
    assert spec == envs.EnvSpec((10, 10, channels), (10, 10, channels), actions, "minatar",
                                np.uint8)


def test_minatar_frames_are_the_game_state_at_0_and_255_under_its_own_rules():
    """Same seed, same actions: our env's frames and rewards are MinAtar's own (sticky actions,
    ramping) with the booleans scaled to 0/255, and the game's end is one terminated episode."""
    from minatar import Environment

    config = cfg.minatar()
    env = envs.make_env("MinAtar/Breakout-v1", 5, True, config)
    reference = Environment("breakout")
    reference.seed(5)
    reference.reset()
    frame, _ = env.reset(seed=5)
    actions = env.unwrapped.action_set                     # minimal set: no-op, left, right
    rng = np.random.default_rng(0)
    total = 0.0
    for step in range(1, 2000):
        assert frame.dtype == np.uint8 and set(np.unique(frame)) <= {0, 255}
        np.testing.assert_array_equal(frame, reference.state().astype(np.uint8) * 255)
        action = int(rng.integers(3))
        frame, reward, terminated, truncated, info = env.step(action)
        expected_reward, expected_done = reference.act(actions[action])
        assert reward == expected_reward and terminated == expected_done and not truncated
        total += reward
        if terminated:
            assert info["game_return"] == total and info["game_length"] == step
            break
    else:
        raise AssertionError("a random Breakout game never ended")


def test_unknown_minatar_id_names_the_games():
    with pytest.raises(ValueError) as error:
        envs.make_env("MinAtar/Brekout-v1", 0, True)
    message = str(error.value)
    assert "did you mean MinAtar/Breakout-v1" in message and "MinAtar/SpaceInvaders-v1" in message
    assert "\n" not in message


def test_minatar_video_colours_each_cell_by_its_highest_channel():
    frame = np.zeros((10, 10, 4), np.uint8)
    frame[0, 0, 0] = 255
    frame[1, 1, 2] = 255
    frame[2, 2, [0, 3]] = 255
    rgb = envs.minatar_rgb(frame)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    palette = envs.MINATAR_PALETTE
    np.testing.assert_array_equal(rgb[0, 0], palette[0])
    np.testing.assert_array_equal(rgb[1, 1], palette[2])
    np.testing.assert_array_equal(rgb[2, 2], palette[3])
    assert rgb.sum() == palette[[0, 2, 3]].sum()          # every other cell is black


def test_training_reward_is_the_sign_only_where_training_clips():
    assert envs.training_reward(-3.0, True) == -1.0
    assert envs.training_reward(0.0, True) == 0.0
    assert envs.training_reward(2.5, False) == 2.5
