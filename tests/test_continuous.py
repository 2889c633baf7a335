"""The continuous-control path end to end: replay of continuous actions, sampled-search
reanalysis, the StateNet update against plain NumPy, and train.py / evaluate.py on Pendulum-v1
and a Control Suite task."""

import dataclasses
import json
import os

import numpy as np
import pytest

import config as cfg
from buffer import ReplayBuffer
from mcts_sampled import search_with_sampled_model
from targets import reanalyze

A = 2                       # action dimensions of the hand-made tasks


def tiny_config(**changes):
    """The pendulum preset at test size: 4 simulations over 2 + 2 candidates."""
    return dataclasses.replace(cfg.pendulum(), **{
        "mlp_state_size": 16, "residual_hidden_size": 16, "action_embedding_size": 8,
        "head_hidden_sizes": (16,), "projection_hidden_size": 16, "projection_output_size": 8,
        "prediction_head_hidden_size": 8, "state_support_bins": 11, "batch_size": 8,
        "num_simulations": 4, "policy_candidates": 2, "widened_candidates": 2,
        "entropy_samples": 32, "replay_capacity": 200, "unroll_steps": 3, "td_steps": 2,
        "discount": 0.9, "sve_start_updates": 0, "td_newest_transitions": 20,
        "xla_inference": False, **changes})


def filled_buffer(config, steps=30, end_at=None):
    """One env: frames [t, t, t] at step t, action (t/100, -t/100), reward t; the game ends
    (truncated) after `end_at` steps if given."""
    buffer = ReplayBuffer(config, (3,), np.float32, 0, 1, action_dims=A)
    buffer.begin_episodes(np.array([0]), np.zeros((1, 3), np.float32))
    for t in range(steps):
        last = end_at is not None and t + 1 == end_at
        buffer.add_step(np.array([[t / 100, -t / 100]], np.float32), np.array([float(t)]),
                        np.full((1, 3), t + 1, np.float32), np.array([False]), np.array([last]),
                        np.zeros(1), np.zeros((1, 0), np.float32), t)
        if last:
            break
    return buffer


def test_the_buffer_stores_continuous_actions_and_zeros_past_the_end(tmp_path):
    config = tiny_config()
    buffer = filled_buffer(config, end_at=10)
    slots = np.array([0, 8])                           # t = 0, and t = 8 of a 10-step game
    batch = buffer.batch_at(slots, np.ones(2, np.float32), np.random.default_rng(0))
    K = config.unroll_steps
    assert batch.actions.shape == (2, K, A) and batch.actions.dtype == np.float32
    stored = np.array([[t / 100, -t / 100] for t in range(10)], np.float32)
    np.testing.assert_array_equal(batch.actions[0], stored[:K])
    np.testing.assert_array_equal(batch.actions[1, :2], stored[8:])
    np.testing.assert_array_equal(batch.actions[1, 2:], 0.0)           # past the end: zeros
    assert batch.stored_policies.shape == (2, K + 1, 0)
    buffer.save(str(tmp_path))
    loaded = ReplayBuffer.load(str(tmp_path), config)
    assert loaded.action_dims == A
    np.testing.assert_array_equal(loaded.actions, buffer.actions)


def test_reanalysis_searches_every_position_with_fresh_widened_candidates():
    """Policy targets are the sampled search's improved policies over its candidates (uniform
    past the end), a* its choice, and the value targets the mixed rule's: compared with one
    direct call of the search on the same roots and the same random stream."""
    import keras

    from networks import StateNet

    config = tiny_config(td_newest_transitions=5)
    keras.utils.set_random_seed(0)
    model = StateNet(config, (3,), A)
    buffer = filled_buffer(config, end_at=12)
    batch = buffer.batch_at(np.array([0, 5, 10]), np.ones(3, np.float32),
                            np.random.default_rng(0))
    targets = reanalyze(batch, model, config=config, updates=5, rng=np.random.default_rng(7))

    K, C = config.unroll_steps, config.policy_candidates + config.widened_candidates
    positions = batch.frames.shape[1]                                  # K + n + 1
    roots = model.initial_inference_sequence(batch.frames)
    rows = (np.arange(3)[:, None] * positions + np.arange(K + 1)).ravel()
    root = roots._replace(state=(roots.state[0][rows],), value=roots.value[rows],
                          reward=roots.reward[rows], policy_mean=roots.policy_mean[rows],
                          policy_std=roots.policy_std[rows])
    search = search_with_sampled_model(model, root, np.random.default_rng(7), explore=True,
                                       **config.sampled_search_options())
    real = batch.transition_masks.reshape(-1) > 0
    assert not real.all()                                             # t = 10 runs past T = 12
    expected = np.where(real[:, None], search.improved_policy, 1 / C).reshape(3, K + 1, C)
    np.testing.assert_allclose(targets.policies, expected, rtol=1e-6)
    np.testing.assert_array_equal(targets.candidates, search.candidates.reshape(3, K + 1, C, A))
    np.testing.assert_array_equal(targets.best_actions, search.action.reshape(3, K + 1, A))
    chosen = search.candidates[np.arange(len(rows)), search.chosen]
    np.testing.assert_array_equal(search.action, chosen)
    # Every sample's SVE (older than T2 = 5 env steps) or TD value, masked past the end.
    td = batch.td_rewards + batch.bootstrap_discounts * roots.value[
        np.arange(3)[:, None] * positions + batch.bootstrap_positions]
    sve = search.root_value.reshape(3, K + 1)
    use_sve = np.array([True, True, False])                          # newest step 11: t ≤ 6
    mixed = np.where(use_sve[:, None], sve, td) * batch.transition_masks
    np.testing.assert_allclose(targets.values, mixed, rtol=1e-6)
    assert set(targets.diagnostics) == {
        "diagnostics/policy_std", "diagnostics/candidate_spread",
        "diagnostics/improved_policy_entropy", "diagnostics/root_q_gap"}


def test_continuous_reanalysis_refuses_a_partial_ratio():
    from networks import StateNet

    config = tiny_config(reanalyze_ratio=0.5)
    buffer = filled_buffer(config)
    batch = buffer.batch_at(np.array([0]), np.ones(1, np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="reanalyze_ratio=1"):
        reanalyze(batch, StateNet(config, (3,), A), config=config, updates=0,
                  rng=np.random.default_rng(0))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _squashed_log_prob(mean, std, actions):
    x = np.arctanh(actions.astype(np.float64))
    normal = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return (normal - 2 * (np.log(2) - x - np.logaddexp(0, -2 * x))).sum(-1)


@pytest.mark.parametrize("action_dims", [1, 2], ids=["full-loss", "simple-loss"])
def test_every_continuous_loss_term_equals_a_plain_numpy_computation(action_dims):
    """The StateNet update's terms from the network's own parts and NumPy: reward and value
    cross-entropies on the h-space supports, Eq. 6 for one action dimension and Eq. 7 for more,
    the Monte Carlo entropy of the same draws, and the total with its weights and 1/K."""
    import keras
    import tensorflow as tf

    from learner import Learner
    from networks import StateNet, policy_parameters

    config = tiny_config()
    keras.utils.set_random_seed(1)
    net = StateNet(config, (3,), action_dims)
    learner = Learner(config, net, (3,), 0)
    rng = np.random.default_rng(2)
    B, K, C, D = config.batch_size, config.unroll_steps, 4, action_dims
    frames = rng.normal(size=(B, K + 1, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (B, K, D)).astype(np.float32)
    rewards = rng.uniform(-16, 0, (B, K)).astype(np.float32)
    values = rng.uniform(-900, 0, (B, K + 1)).astype(np.float32)
    improved = rng.dirichlet(np.ones(C), size=(B, K + 1)).astype(np.float32)
    candidates = np.clip(np.tanh(rng.normal(size=(B, K + 1, C, D))), -0.999, 0.999)
    candidates = candidates.astype(np.float32)
    best = candidates[:, :, 0]
    transition = (rng.uniform(size=(B, K + 1)) > 0.2).astype(np.float32)
    value_masks = np.maximum(transition, rng.uniform(size=(B, K + 1)) > 0.5).astype(np.float32)
    weights = rng.uniform(0.1, 1, B).astype(np.float32)

    statistics = [v.numpy() for v in learner._statistics]
    generator = learner.augment_rng.state.numpy()
    _, _, scalars = learner.gradients(frames, actions, rewards, values,
                                      (improved, candidates, best), transition, value_masks,
                                      weights)
    # The reference: the same parts in training mode from the same statistics and noise.
    for variable, saved in zip(learner._statistics, statistics):
        variable.assign(saved)
    noise_rng = tf.random.Generator.from_state(generator, "philox")
    latent = net.represent(frames[:, 0], training=True)
    value_loss = policy_loss = entropy = reward_loss = consistency = 0.0
    for k in range(K + 1):
        if k:
            latent, reward_logits, _ = net.dynamics(latent, actions[:, k - 1], (), True, 0.5)
            target = net.reward_support.two_hot(rewards[:, k - 1]).numpy()
            reward_loss += -(target * _log_softmax(reward_logits.numpy())).sum(-1) \
                * transition[:, k - 1]
        value_logits, raw = net.predict(latent, training=True)
        if k:                                   # the SimSiam target: the normaliser moves here
            real = net.project(net.represent(frames[:, k], training=True), True).numpy()
            prediction = net.predict_projection(net.project(latent, True), True).numpy()
            cosine = (prediction * real).sum(-1) / (np.linalg.norm(prediction, axis=-1)
                                                    * np.linalg.norm(real, axis=-1))
            consistency += -cosine * transition[:, k - 1]
        target = net.value_support.two_hot(values[:, k]).numpy()
        value_loss += -(target * _log_softmax(value_logits.numpy())).sum(-1) * value_masks[:, k]
        mean, std = (x.numpy().astype(np.float64) for x in policy_parameters(raw, config))
        if action_dims == 1:
            step_loss = -(improved[:, k] * _squashed_log_prob(mean[:, None], std[:, None],
                                                              candidates[:, k])).sum(-1)
        else:
            step_loss = -_squashed_log_prob(mean, std, best[:, k])
        noise = noise_rng.normal([config.entropy_samples, B, D]).numpy()
        draws = np.clip(np.tanh(mean + std * noise), -0.999, 0.999)
        policy_loss += step_loss * transition[:, k]
        entropy += -_squashed_log_prob(mean, std, draws).mean(0) * transition[:, k]
    for name, expected in [("reward", reward_loss), ("value", value_loss),
                           ("policy", policy_loss), ("policy_entropy", entropy),
                           ("consistency", consistency)]:
        assert scalars[f"losses/{name}"].numpy() == pytest.approx(expected.mean() / K, rel=2e-4,
                                                                  abs=1e-5), name
    total = np.mean(weights * (reward_loss + policy_loss + 0.25 * value_loss + 2.0 * consistency
                               - 0.05 * entropy)) / K
    assert (config.value_loss_coeff, config.consistency_loss_coeff,
            config.entropy_loss_coeff) == (0.25, 2.0, 0.05)            # the official weights
    assert scalars["losses/total"].numpy() == pytest.approx(total, rel=2e-4)


def test_the_observation_normaliser_moves_in_updates_and_is_checkpointed_with_the_weights():
    """Every learner call updates the running moments from the o_t and the K target
    observations, and a model built from the saved weights normalises alike."""
    import keras

    from learner import Learner
    from networks import StateNet

    config = tiny_config()
    keras.utils.set_random_seed(0)
    net = StateNet(config, (3,), A)
    learner = Learner(config, net, (3,), 0)
    buffer = filled_buffer(config)
    batch = buffer.batch_at(np.arange(8), np.ones(8, np.float32), np.random.default_rng(0))
    targets = reanalyze(batch, net, config=config, updates=0, rng=np.random.default_rng(0))
    learner.update(batch, targets, 0)
    count = net.representation.normalizer.count.numpy()
    assert count == 1e3 + (config.unroll_steps + 1) * config.batch_size
    copy = StateNet(config, (3,), A)
    copy.set_weights(net.get_weights())
    np.testing.assert_array_equal(copy.initial_inference(batch.frames[:, 0]).value,
                                  net.initial_inference(batch.frames[:, 0]).value)


def test_a_resumed_continuous_run_computes_the_same_next_updates(tmp_path):
    """Weights (the observation normaliser's moments included), optimiser, generators, priorities
    and counters come back from a checkpoint: the next updates are equal to the last bit."""
    import train
    from checkpoints import load_checkpoint

    config = tiny_config(num_envs=2, env_steps=400, start_transitions=40, log_interval=1000,
                         eval_interval=10_000, checkpoint_interval=10_000)

    def next_updates(run):
        results = []
        for _ in range(2):
            batch = run.buffer.sample(config.batch_size, run.rng)
            targets = reanalyze(batch, run.target_model, config=config, updates=run.updates,
                                rng=run.rng)
            result = run.learner.update(batch, targets, run.updates)
            run.buffer.update_priorities(batch.indices, result.priorities, batch.collected_at)
            run.updates += 1
            results.append((batch.indices.tolist(), batch.actions.tolist(), result.scalars,
                            result.priorities.tolist()))
        return results, [w.tolist() for w in run.online.get_weights()]

    trainer = train.Trainer(config, str(tmp_path / "run"), None)
    trainer.start_games([0, 1])
    while len(trainer.buffer) < config.start_transitions:
        trainer.selfplay_step()
    for _ in range(3):
        assert trainer.update_once()
    resumed = train.Trainer(config, str(tmp_path / "run"),
                            load_checkpoint(trainer.save_checkpoint()))
    assert resumed.updates == 3
    assert next_updates(resumed) == next_updates(trainer)
    trainer.close()
    resumed.close()


# --- from the command line --------------------------------------------------------------------

SHORT_RUN = ["--set", "start_transitions=32", "--set", "num_envs=2",
             "--set", "batch_size=8", "--set", "num_simulations=4", "--set", "eval_episodes=1",
             "--set", "eval_interval=1000", "--set", "checkpoint_interval=1000",
             "--set", "entropy_samples=16", "--set", "eval_max_episode_steps=20"]


@pytest.mark.slow
@pytest.mark.parametrize("env_id, preset, env_steps, updates", [
    ("Pendulum-v1", "pendulum", 64, 8),                      # 0.25 an env step from 32 on
    ("dm_control/cartpole-balance-v0", "dmc_cpu", 128, 32)])  # 0.5 a control step from 64 on
def test_a_short_continuous_run_trains_and_evaluates_from_the_command_line(tmp_path, env_id,
                                                                           preset, env_steps,
                                                                           updates):
    from test_train import run_script

    run_dir = str(tmp_path / "run")
    result = run_script("train.py", "--env", env_id, "--config", preset, "--run-dir", run_dir,
                        "--set", f"env_steps={env_steps}", *SHORT_RUN, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = cfg.Config.from_json(open(os.path.join(run_dir, "config.json")).read())
    assert config.total_updates == updates           # from 32 transitions on, at the ratio
    assert f"done: {env_steps} env steps, {updates} updates" in result.stdout
    scores, video = str(tmp_path / "scores.json"), str(tmp_path / "game.mp4")
    film = ["--video", video] if preset == "dmc_cpu" else []
    result = run_script("evaluate.py", "--checkpoint", run_dir, "--episodes", "2", "--json",
                        scores, *film, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(scores))
    assert summary["episodes"] == 2 and len(summary["returns"]) == 2
    assert summary["lengths"] == [20, 20]
    if film:                        # MuJoCo's offscreen renderer: one picture per decision
        import cv2

        capture = cv2.VideoCapture(video)
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 21
        ok, picture = capture.read()
        assert ok and picture.shape == (384, 384, 3) and picture.std() > 10


def test_a_discrete_preset_on_a_continuous_task_is_a_usage_error(tmp_path):
    from test_train import assert_one_line_usage_error, run_script

    line = assert_one_line_usage_error(run_script(
        "train.py", "--config", "classic", "--env", "Pendulum-v1", "--run-dir", str(tmp_path)))
    assert "continuous actions" in line and "--config pendulum" in line


def test_filming_that_cannot_be_done_is_one_clear_error(tmp_path):
    """The renderer's child reports its failure (here: a folder that does not exist) and the parent
    raises one line naming what filming needs."""
    import evaluate

    states = np.zeros((2, 4))                                  # cartpole: 2 qpos + 2 qvel
    with pytest.raises(ValueError) as error:
        evaluate.film_control_suite("dm_control/cartpole-balance-v0", states, 2,
                                    str(tmp_path / "missing" / "game.mp4"))
    message = str(error.value)
    assert "cannot film 'dm_control/cartpole-balance-v0'" in message and "\n" not in message
    assert "cannot write video" in message
