"""Replay buffer and reanalysis (buffer.py) against slow, obviously-correct references."""

import dataclasses

import numpy as np
import pytest

import config as cfg
import mcts
from buffer import Batch, ReplayBuffer
from networks import NetworkOutput, stack_frames
from targets import (
    initial_inference_calls,
    initial_inferences_per_sample,
    model_diagnostics,
    reanalyze,
    search_diagnostics,
    search_value_mask,
    step_rewards,
    value_prefix_targets,
)

A = 3


def stacked(batch, config):
    """The batch's stacked observations at t..t+K+n, [B, K+n+1, S * frame],
    as the network sees them."""
    return stack_frames(batch.frames, config.frame_stack).numpy()


def acting_policy(t):
    """The stored acting policy of step t in `fill`: 0.8 on action t % A."""
    return np.where(np.arange(A) == t % A, 0.8, 0.1).astype(np.float32)


def make_config(**changes):
    base = dict(frame_stack=3, unroll_steps=5, td_steps=3, lstm_horizon_len=2, discount=0.9,
                replay_capacity=200, use_priority=True, priority_alpha=1.0, priority_beta=1.0,
                num_simulations=4, max_num_considered_actions=2, sve_start_updates=10,
                td_newest_transitions=20)
    base.update(changes)
    return dataclasses.replace(cfg.classic(), **base)


def fill(buffer, episodes, env=0):
    """Vector frames whose value is the episode id * 1000 + step; reward 1 per step.

    `episodes` is a list of (length, terminated) played one after another in env 0 (one env)."""
    step = 0
    for episode_id, (length, terminated) in enumerate(episodes):
        buffer.begin_episodes(np.array([0]), np.array([[episode_id * 1000.0]], np.float32))
        for t in range(length):
            last = t == length - 1
            buffer.add_step(np.array([t % A]), np.array([1.0], np.float32),
                            np.array([[episode_id * 1000.0 + t + 1]], np.float32),
                            np.array([last and terminated]), np.array([last and not terminated]),
                            np.array([float(t)]), acting_policy(t)[None], step)
            step += 1


def reference_targets(config, length, terminated, t, episode_id, values_of):
    """Slow per-position targets for index-valued observations."""
    K, n, S, gamma = config.unroll_steps, config.td_steps, config.frame_stack, config.discount
    obs = [[episode_id * 1000.0 + min(max(j - S + 1 + s, 0), length) for s in range(S)]
           for j in range(t, t + K + n + 1)]
    masks = [1.0 if t + k < length else 0.0 for k in range(K + 1)]
    # The value loss also covers a terminal o_T (absorbing, target 0), never a truncated one.
    value_masks = [1.0 if t + k < length or (t + k == length and terminated) else 0.0
                   for k in range(K + 1)]
    prefix, running = [], 0.0
    for k in range(K):
        if k % config.lstm_horizon_len == 0:
            running = 0.0
        running += 1.0 if t + k < length else 0.0
        prefix.append(running)
    td = []
    for k in range(K + 1):
        j = t + k
        if j >= length:
            td.append(0.0)
            continue
        total, i = 0.0, 0
        while i < n and j + i < length:
            total += gamma ** i
            i += 1
        if j + n < length:
            total += gamma ** n * values_of(j + n)
        elif not terminated:
            total += gamma ** (length - j) * values_of(length)
        td.append(total)
    return obs, masks, value_masks, prefix, td


@pytest.mark.parametrize("terminated", [True, False])
def test_sampled_positions_match_the_reference(terminated):
    config = make_config()
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(7, terminated), (4, terminated), (12, terminated)])
    assert len(buffer) == 23
    batch = buffer.sample(64, np.random.default_rng(0))
    lengths = {0: 7, 1: 4, 2: 12}
    observations = stacked(batch, config)
    for b in range(64):
        first = observations[b, 0, -1]
        episode_id, t = int(first // 1000), int(first % 1000)
        obs, masks, value_masks, prefix, td_plain = reference_targets(
            config, lengths[episode_id], terminated, t, episode_id, lambda j: 0.0)
        np.testing.assert_array_equal(observations[b], obs)
        np.testing.assert_array_equal(batch.transition_masks[b], masks)
        np.testing.assert_array_equal(batch.value_masks[b], value_masks)
        for k in range(config.unroll_steps + 1):
            expected = acting_policy(t + k) if masks[k] else np.full(A, 1.0 / A, np.float32)
            np.testing.assert_allclose(batch.stored_policies[b, k], expected)
        np.testing.assert_allclose(batch.reward_targets[b], prefix)
        np.testing.assert_allclose(batch.td_rewards[b], td_plain, rtol=1e-6)
        inside = np.array(masks[:config.unroll_steps]) > 0
        np.testing.assert_array_equal(batch.actions[b][inside], (t + np.arange(5))[inside] % A)


S = 3                            # frame_stack of make_config


class IndexModel:
    """initial_inference value = the observation's newest frame value / 100
    (a deterministic model)."""

    def __init__(self):
        self.rows = []

    def initial_inference_sequence(self, frames):
        positions = frames.shape[1] - S + 1
        observations = np.concatenate([frames[:, s:s + positions] for s in range(S)], axis=-1)
        return self.initial_inference(observations.reshape(-1, observations.shape[-1]))

    def initial_inference(self, observations):
        self.rows.append(len(observations))
        B = len(observations)
        value = (observations[:, -1] / 100.0).astype(np.float32)
        return NetworkOutput((observations.astype(np.float32),), np.zeros(B, np.float32), value,
                             np.tile(np.array([0.5, 0.0, -0.5], np.float32), (B, 1)))

    def recurrent_inference(self, state, actions):
        B = len(actions)
        return NetworkOutput(state, actions.astype(np.float32), np.full(B, 0.25, np.float32),
                             np.zeros((B, A), np.float32))


@pytest.mark.parametrize("terminated", [True, False])
@pytest.mark.parametrize("td_steps", [3, 8])
def test_reanalysis_targets(terminated, td_steps):
    config = make_config(gumbel_scale=1.0, td_steps=td_steps)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(9, terminated), (6, terminated)])
    batch = buffer.sample(16, np.random.default_rng(1))
    model = IndexModel()
    targets = reanalyze(batch, model, config=config, updates=0, rng=np.random.default_rng(2))
    K, n = config.unroll_steps, config.td_steps
    # One inference over the distinct positions: all K+n+1 while roots and bootstraps overlap
    # (n = 3), the K+1 roots and the K+1 bootstraps once n > K+1 (n = 8, where most bootstraps are
    # the truncated or terminal o_T of these 6- and 9-step episodes).
    assert model.rows == [16 * (K + n + 1) if n <= K + 1 else 16 * 2 * (K + 1)]
    assert targets.sve_fraction == 0.0
    lengths = {0: 9, 1: 6}
    observations = stacked(batch, config)
    for b in range(16):
        first = observations[b, 0, -1]
        episode_id, t = int(first // 1000), int(first % 1000)
        _, masks, _, _, td = reference_targets(config, lengths[episode_id], terminated, t,
                                               episode_id,
                                               lambda j, e=episode_id: (e * 1000.0 + j) / 100.0)
        np.testing.assert_allclose(targets.values[b], td, rtol=1e-5)
        for k in range(K + 1):
            if masks[k] == 0:
                np.testing.assert_allclose(targets.policies[b, k], 1.0 / A)
    # Policy targets and SVE values equal a search run directly on the same roots and noise.
    roots = observations[:, :K + 1].reshape(16 * (K + 1), 3)
    root = IndexModel().initial_inference(roots)
    gumbel = mcts.sample_gumbel(np.random.default_rng(2), (16 * (K + 1), A), 1.0)
    search = mcts.search_with_model(IndexModel(), root, gumbel, num_simulations=4,
                                    max_num_considered_actions=2, discount=0.9, c_visit=50.0,
                                    c_scale=0.1, q_normalization="tree", value_delta_max=0.01)
    inside = batch.transition_masks > 0
    np.testing.assert_allclose(targets.policies[inside],
                               search.improved_policy.reshape(16, K + 1, A)[inside], rtol=1e-6)
    late = reanalyze(batch, IndexModel(), config=config, updates=10_000,
                     rng=np.random.default_rng(2))
    sve = search_value_mask(config, 10_000, batch.collected_at, batch.newest_env_step)
    expected = np.where(sve[:, None], search.root_value.reshape(16, K + 1), targets.values) \
        * batch.transition_masks
    np.testing.assert_allclose(late.values, expected, rtol=1e-5)
    assert late.sve_fraction == pytest.approx(sve.mean())


@pytest.mark.parametrize("terminated", [True, False])
def test_split_windows_give_the_one_windows_targets(monkeypatch, terminated):
    """n = 3 <= K+1 with a quarter of the samples searched: the bootstraps of every sample and the
    roots of the searched ones ((K+1) x 1.25 = 7.5 per sample on average) cost less than one
    window of K+n+1 = 9, so reanalysis infers them apart, and the targets are those of one
    window."""
    import targets as targets_module

    config = make_config(gumbel_scale=1.0, td_steps=3, reanalyze_ratio=0.25,
                         td_newest_transitions=0)
    assert not targets_module._one_window(config)
    assert targets_module._one_window(make_config(td_steps=3))          # every sample searched
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(9, terminated), (6, terminated)])
    batch = buffer.sample(16, np.random.default_rng(1))
    split_model = IndexModel()
    split = reanalyze(batch, split_model, config=config, updates=10_000,
                      rng=np.random.default_rng(2))
    K = config.unroll_steps
    three_windows = dataclasses.replace(config, reanalysis_chunk_size=3 * (K + 1),
                                        batch_size=16)
    chunked_model = IndexModel()
    reanalyze(batch, chunked_model, config=three_windows, updates=10_000,
              rng=np.random.default_rng(2))
    assert len(chunked_model.rows) == initial_inference_calls(three_windows) == 7   # 20 windows
    assert initial_inferences_per_sample(three_windows) == 20 * (K + 1) / 16
    monkeypatch.setattr(targets_module, "_one_window", lambda config: True)
    whole = reanalyze(batch, IndexModel(), config=config, updates=10_000,
                      rng=np.random.default_rng(2))
    searched = split_model.rows[0] // (K + 1) - 16
    assert 0 < searched < 16 and split_model.rows == [(16 + searched) * (K + 1)]
    np.testing.assert_array_equal(split.values, whole.values)
    np.testing.assert_array_equal(split.policies, whole.policies)
    assert split.sve_fraction == whole.sve_fraction > 0


def test_bootstrap_windows_of_image_frames():
    """Frames [B, F, H, W, C]: the bootstrap window of each sample starts at its first bootstrap."""
    from targets import _inference_windows
    config = make_config(td_steps=8)
    K, n = config.unroll_steps, config.td_steps
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, S - 1 + K + n + 1, 2, 2, 3)).astype(np.uint8)
    first = np.array([8, 3, 1, 8])                                   # min(n, T - t)
    positions = np.minimum(first[:, None] + np.arange(K + 1), [[8], [9], [1], [13]])
    batch = dataclasses.make_dataclass("B", ["frames", "bootstrap_positions"])(frames, positions)
    windows = _inference_windows(batch, config, np.ones(4, bool))
    assert windows.positions == K + 1 and windows.frames.shape == (8, S + K, 2, 2, 3)
    for b in range(4):
        np.testing.assert_array_equal(windows.frames[b], frames[b, :S + K])
        np.testing.assert_array_equal(windows.frames[4 + b], frames[b, first[b]:first[b] + S + K])
    # Row r of the flat inference is window r // W, position r % W (position p of window b + 4
    # stands for sampled position first[b] + p).
    window, position = np.divmod(windows.bootstrap_rows, K + 1)
    np.testing.assert_array_equal(window, np.arange(4, 8)[:, None] + 0 * positions)
    np.testing.assert_array_equal(first[:, None] + position, positions)
    np.testing.assert_array_equal(windows.root_rows,
                                  np.arange(4)[:, None] * (K + 1) + np.arange(K + 1))
    # Only samples 1 and 3 reanalysed: their root windows come first, then all four bootstrap ones.
    some = _inference_windows(batch, config, np.array([False, True, False, True]))
    assert some.frames.shape == (6, S + K, 2, 2, 3)
    np.testing.assert_array_equal(some.frames[:2], frames[[1, 3], :S + K])
    np.testing.assert_array_equal(some.frames[2:], windows.frames[4:])
    np.testing.assert_array_equal(some.root_rows,
                                  np.arange(2)[:, None] * (K + 1) + np.arange(K + 1))
    np.testing.assert_array_equal(some.bootstrap_rows, windows.bootstrap_rows - 2 * (K + 1))


def test_reanalysis_in_chunks_gives_the_same_targets():
    config = make_config()
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(9, False), (6, True)])
    batch = buffer.sample(16, np.random.default_rng(1))
    whole = reanalyze(batch, IndexModel(), config=config, updates=0, rng=np.random.default_rng(2))
    model = IndexModel()
    chunked = reanalyze(batch, model, config=dataclasses.replace(config, reanalysis_chunk_size=20),
                        rng=np.random.default_rng(2), updates=0)
    P = config.unroll_steps + config.td_steps + 1
    assert model.rows == [2 * P] * 8                   # 20 // P = 2 samples per call
    sixteen = dataclasses.replace(config, batch_size=16)
    assert initial_inference_calls(dataclasses.replace(sixteen, reanalysis_chunk_size=20)) == 8
    assert initial_inference_calls(sixteen) == 1
    assert initial_inferences_per_sample(sixteen) == P
    np.testing.assert_array_equal(chunked.values, whole.values)
    np.testing.assert_array_equal(chunked.policies, whole.policies)


@pytest.mark.parametrize("td_steps", [3, 8])                # one window; roots and bootstraps apart
def test_reanalyze_ratio_keeps_stored_policies_for_the_rest(td_steps):
    config = make_config(reanalyze_ratio=0.25, sve_start_updates=0, td_newest_transitions=0,
                         td_steps=td_steps)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(9, False), (6, True)])
    batch = buffer.sample(16, np.random.default_rng(1))
    model = IndexModel()
    targets = reanalyze(batch, model, config=config, updates=0, rng=np.random.default_rng(2))
    K = config.unroll_steps
    kept = np.all(targets.policies == batch.stored_policies, axis=(1, 2))
    assert kept.sum() == 12                                  # 16 - round(0.25 * 16) samples
    assert targets.sve_fraction == 0.25                      # SVE only where a search ran
    fresh = np.flatnonzero(~kept)
    observations = stacked(batch, config)[fresh, :K + 1].reshape(-1, 3)
    root = IndexModel().initial_inference(observations)
    # The reanalysis draws the reanalysed rows first, then the Gumbel noise for their roots.
    rng = np.random.default_rng(2)
    rng.permutation(16)
    gumbel = mcts.sample_gumbel(rng, (len(fresh) * (K + 1), A), 1.0)
    search = mcts.search_with_model(IndexModel(), root, gumbel, num_simulations=4,
                                    max_num_considered_actions=2, discount=0.9, c_visit=50.0,
                                    c_scale=0.1, q_normalization="tree", value_delta_max=0.01)
    np.testing.assert_allclose(targets.values[fresh],
                               search.root_value.reshape(len(fresh), K + 1)
                               * batch.transition_masks[fresh],
                               rtol=1e-5)
    inside = batch.transition_masks[fresh] > 0
    np.testing.assert_allclose(targets.policies[fresh][inside],
                               search.improved_policy.reshape(len(fresh), K + 1, A)[inside],
                               rtol=1e-6)
    # The rest keep their TD targets, whose bootstraps are inferred without their roots.
    td_only = reanalyze(batch, IndexModel(), config=dataclasses.replace(config, reanalyze_ratio=1.0,
                        sve_start_updates=10**9), updates=0, rng=np.random.default_rng(2))
    np.testing.assert_allclose(targets.values[kept], td_only.values[kept], rtol=1e-6)


def test_mixed_rule_boundaries():
    config = make_config(sve_start_updates=100, td_newest_transitions=50)
    collected = np.array([949, 950, 951])                # ages 51, 50, 49 at newest step 1000
    assert not search_value_mask(config, 99, collected, 1000).any()
    np.testing.assert_array_equal(search_value_mask(config, 100, collected, 1000),
                                  [True, True, False])
    off = dataclasses.replace(config, use_search_value=False)
    assert not search_value_mask(off, 10**6, collected, 1000).any()


def test_search_diagnostics_match_closed_forms():
    # Root 0: prior (1/2, 1/2), improved (3/4, 1/4); root 1: prior ∝ (e², 1), improved = the prior.
    prior_logits = np.array([[0.0, 0.0], [2.0, 0.0]], np.float32)
    prior_1 = np.array([np.exp(2.0), 1.0]) / (np.exp(2.0) + 1.0)
    improved = np.array([[0.75, 0.25], prior_1], np.float32)
    completed_q = np.array([[0.5, 0.2], [0.1, 0.4]], np.float32)
    diagnostics = search_diagnostics(prior_logits, improved, completed_q)

    def entropy(p):
        return -sum(x * np.log(x) for x in p)

    kl_0 = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    np.testing.assert_allclose(diagnostics["diagnostics/prior_entropy"],
                               (np.log(2.0) + entropy(prior_1)) / 2, rtol=1e-6)
    np.testing.assert_allclose(diagnostics["diagnostics/logit_gap"], 1.0)
    np.testing.assert_allclose(diagnostics["diagnostics/improved_policy_entropy"],
                               (entropy([0.75, 0.25]) + entropy(prior_1)) / 2, rtol=1e-6)
    np.testing.assert_allclose(diagnostics["diagnostics/policy_improvement_kl"], kl_0 / 2,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diagnostics["diagnostics/root_q_gap"], (0.3 + 0.3) / 2, rtol=1e-6)
    assert search_diagnostics(prior_logits[:0], improved[:0], completed_q[:0]) == {}


def test_priority_sampling_frequencies_and_weights():
    config = make_config(replay_capacity=64, priority_alpha=0.5, priority_beta=0.7)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(10, True)])
    slots = np.arange(10)
    priorities = np.arange(1, 11, dtype=np.float64)
    buffer.update_priorities(slots, priorities, buffer.collected_at[slots])
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    draws = 0
    for _ in range(400):
        batch = buffer.sample(50, rng)
        counts += np.bincount(batch.indices, minlength=64)[:10]
        draws += 50
        # Importance weights: (N P(i))^-β normalised by the batch maximum, clipped to [0.1, 1].
        p = priorities[batch.indices] ** 0.5 / (priorities ** 0.5).sum()
        w = (10 * p) ** -0.7
        np.testing.assert_allclose(batch.importance_weights, np.clip(w / w.max(), 0.1, 1),
                                   rtol=1e-5)
    expected = priorities ** 0.5 / (priorities ** 0.5).sum()
    # 20,000 stratified draws: every frequency within 0.01 of its probability (std ≈ 0.003).
    np.testing.assert_allclose(counts / draws, expected, atol=0.01)
    buffer.update_priorities(np.array([0]), np.array([1e6]), buffer.collected_at[:1])
    assert np.mean(buffer.sample(1000, rng).indices == 0) > 0.8


def test_importance_weights_are_clipped_at_the_official_floor():
    config = make_config(replay_capacity=64, priority_alpha=1.0, priority_beta=1.0)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(10, True)])
    buffer.update_priorities(np.arange(10), np.array([1.0] * 9 + [1000.0]),
                             buffer.collected_at[:10])
    batch = buffer.sample(200, np.random.default_rng(0))
    rare = buffer.priorities.get(batch.indices) == 1.0
    assert rare.any() and (~rare).any()
    # Unclipped, a rare sample weighs 1000 times a frequent one: frequent ones are raised to 0.1.
    np.testing.assert_allclose(batch.importance_weights[rare], 1.0)
    np.testing.assert_allclose(batch.importance_weights[~rare], 0.1)


def test_new_transitions_get_the_current_not_the_all_time_maximum_priority():
    config = make_config(replay_capacity=64)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    assert buffer.max_priority() == 1.0                       # empty buffer
    fill(buffer, [(5, True)])
    np.testing.assert_array_equal(buffer.priorities.get(np.arange(5)), 1.0)
    buffer.update_priorities(np.arange(5), np.array([9.0, 0.5, 0.5, 0.5, 0.5]),
                             buffer.collected_at[:5])
    buffer.update_priorities(np.array([0]), np.array([3.0]), buffer.collected_at[:1])  # 9 is gone
    fill(buffer, [(4, True)])                                  # slots 6..9 (slot 5 holds o_T)
    np.testing.assert_array_equal(buffer.priorities.get(np.arange(6, 10)), 3.0)
    assert buffer.priorities.get(np.array([5, 10])).tolist() == [0.0, 0.0]   # final observations


def test_without_value_prefix_the_reward_targets_are_the_rewards():
    """value_prefix=False: the plain reward head predicts u_{t+k-1} at unroll step k, which is what
    the search reads as the reward of that edge (networks: reward = the decoded head output)."""
    config = make_config(value_prefix=False, replay_capacity=64)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    buffer.begin_episodes(np.array([0]), np.array([[0.0]], np.float32))
    rewards = [0.5, -1.0, 2.0, 0.0, 3.0, 1.5, 4.0]
    for t, reward in enumerate(rewards):
        buffer.add_step(np.array([0]), np.array([reward], np.float32),
                        np.array([[t + 1.0]], np.float32), np.array([t == 6]), np.array([False]),
                        np.array([0.0]), acting_policy(t)[None], t)
    batch = buffer.sample(32, np.random.default_rng(0))
    observations = stacked(batch, config)
    for b in range(32):
        t = int(observations[b, 0, -1])
        expected = [rewards[t + k] if t + k < 7 else 0.0 for k in range(config.unroll_steps)]
        np.testing.assert_allclose(batch.reward_targets[b], expected)
    prefix = value_prefix_targets(np.array([rewards[:5]], np.float32), make_config())
    np.testing.assert_allclose(prefix, [[0.5, -0.5, 2.0, 2.0, 3.0]])   # restarts every 2 steps


class ScaledActionModel:
    """The root latent is the observation's newest frame s; g(s, a) = s · (1 + a/4), and the
    predicted reward of action 0, 1, 2 is 0, 1, 0.4."""

    def initial_inference_sequence(self, frames):
        B = len(frames)
        return NetworkOutput((frames[:, -1].astype(np.float32),), np.zeros(B, np.float32),
                             np.zeros(B, np.float32), np.zeros((B, A), np.float32))

    def recurrent_inference(self, state, actions):
        B = len(actions)
        return NetworkOutput((state[0] * (1 + actions[:, None] / 4),),
                             np.array([0.0, 1.0, 0.4], np.float32)[actions],
                             np.zeros(B, np.float32), np.zeros((B, A), np.float32))


def test_model_diagnostics_match_closed_forms():
    """Action difference: the pair (0, 2) is |s|/2 apart against a mean size of 1.25 |s|: 40%.
    Rewards: the true ones come back from the value prefixes (restarts every 2 steps); of the 3
    real steps that score, predictions 1, 0.4 and 1 get 2 right; of the 5 real steps that do not,
    0, 0.4, 1, 1 and 0 get 3 right (row 1 ends after 3 steps)."""
    config = make_config()
    K = config.unroll_steps
    rewards = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], np.float32)
    prefixes = value_prefix_targets(rewards, config)
    np.testing.assert_array_equal(step_rewards(prefixes, config), rewards)
    frames = np.zeros((2, S - 1 + K + config.td_steps + 1, 2), np.float32)
    frames[:, S - 1] = [[2.0, -2.0], [4.0, 0.0]]
    zeros = np.zeros((2, K + 1), np.float32)
    batch = Batch(frames=frames, actions=np.array([[1, 0, 2, 2, 1], [1, 1, 0, 0, 0]], np.int32),
                  reward_targets=prefixes,
                  transition_masks=np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.float32),
                  value_masks=zeros, importance_weights=np.ones(2, np.float32),
                  indices=np.arange(2), stored_policies=np.zeros((2, K + 1, A), np.float32),
                  td_rewards=zeros, bootstrap_positions=zeros.astype(int),
                  bootstrap_discounts=zeros, collected_at=np.arange(2), newest_env_step=0)
    diagnostics = model_diagnostics(ScaledActionModel(), batch, config)
    assert diagnostics.keys() == {"diagnostics/action_difference",
                                  "diagnostics/reward_hit_accuracy",
                                  "diagnostics/reward_zero_accuracy"}
    np.testing.assert_allclose(diagnostics["diagnostics/action_difference"], 40.0, rtol=1e-6)
    np.testing.assert_allclose(diagnostics["diagnostics/reward_hit_accuracy"], 2 / 3)
    np.testing.assert_allclose(diagnostics["diagnostics/reward_zero_accuracy"], 3 / 5)
    no_hits = batch._replace(reward_targets=np.zeros_like(prefixes))
    assert "diagnostics/reward_hit_accuracy" not in model_diagnostics(ScaledActionModel(),
                                                                      no_hits, config)


def test_wrap_around_removes_the_positions_whose_frames_are_overwritten():
    """Capacity 20, one env: of four 6-step games (7 slots each, ordinals 0..27) ordinals 8..27
    stay. Game 1 (ordinals 7..13) keeps the positions t = 3..5, whose frames t-2..t+K+n all
    remain."""
    config = make_config(replay_capacity=20)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(6, True), (6, True), (6, True), (6, True)])
    assert len(buffer) == 3 + 6 + 6 and buffer.num_added == 24
    batch = buffer.sample(200, np.random.default_rng(0))
    observations = stacked(batch, config)
    positions = set()
    for b in range(200):
        first = observations[b, 0, -1]
        episode_id, t = int(first // 1000), int(first % 1000)
        positions.add((episode_id, t))
        obs, masks, _, prefix, _ = reference_targets(config, 6, True, t, episode_id, lambda j: 0.0)
        np.testing.assert_array_equal(observations[b], obs)
        np.testing.assert_array_equal(batch.transition_masks[b], masks)
    assert positions == {(1, t) for t in range(3, 6)} | {(e, t) for e in (2, 3) for t in range(6)}


def test_lockstep_envs_and_closing_an_open_episode():
    config = make_config()
    buffer = ReplayBuffer(config, (1,), np.float32, A, 2)
    buffer.begin_episodes(np.array([0, 1]), np.array([[0.0], [5000.0]], np.float32))
    for t in range(5):
        done = np.array([t == 2, False])
        buffer.add_step(np.array([0, 1]), np.ones(2, np.float32),
                        np.array([[t + 1.0], [5000.0 + t + 1]], np.float32), done,
                        np.zeros(2, bool), np.zeros(2), np.full((2, A), 1 / A, np.float32), 2 * t)
        if done[0]:
            buffer.begin_episodes(np.array([0]), np.array([[100.0]], np.float32))
    assert len(buffer) == 3          # env 0's finished game; no running one reaches t + K + n yet
    buffer.begin_episodes(np.array([1]), np.array([[9000.0]], np.float32))   # e.g. after a resume
    assert len(buffer) == 8
    batch = buffer.sample(100, np.random.default_rng(0))
    newest = stacked(batch, config)[:, 0, -1]
    env1 = newest >= 5000
    assert env1.any()
    # The closed episode is truncated: its last step bootstraps from its final observation.
    last = env1 & (newest == 5004)
    assert last.any()
    np.testing.assert_allclose(batch.bootstrap_discounts[last, 0], config.discount)


def test_save_load_round_trip(tmp_path):
    config = make_config()
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(7, True), (5, False)])
    buffer.begin_episodes(np.array([0]), np.array([[7000.0]], np.float32))
    buffer.add_step(np.array([1]), np.array([1.0], np.float32), np.array([[7001.0]], np.float32),
                    np.array([False]), np.array([False]), np.array([0.5]),
                    np.full((1, A), 1 / A, np.float32), 99)
    buffer.update_priorities(np.arange(5), np.arange(1.0, 6.0), buffer.collected_at[:5])
    buffer.save(str(tmp_path / "buffer"))
    loaded = ReplayBuffer.load(str(tmp_path / "buffer"), config)
    assert len(loaded) == len(buffer) and loaded.num_added == buffer.num_added
    first = buffer.sample(32, np.random.default_rng(5))
    second = loaded.sample(32, np.random.default_rng(5))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # The running game goes on in both: at 10 steps its positions t + K + n < 10 are sampleable.
    for t in range(1, 10):
        for either in (buffer, loaded):
            either.add_step(np.array([t % A]), np.array([1.0], np.float32),
                            np.array([[7001.0 + t]], np.float32), np.array([False]),
                            np.array([False]), np.array([0.5]), np.full((1, A), 1 / A, np.float32),
                            99 + t)
    assert len(loaded) == len(buffer) == 12 + 2
    for a, b in zip(buffer.sample(32, np.random.default_rng(6)),
                    loaded.sample(32, np.random.default_rng(6))):
        np.testing.assert_array_equal(a, b)
    buffer.begin_episodes(np.array([0]), np.array([[0.0]], np.float32))
    loaded.begin_episodes(np.array([0]), np.array([[0.0]], np.float32))
    assert len(loaded) == len(buffer) == 12 + 10
    with pytest.raises(ValueError, match="cannot load the replay buffer"):
        ReplayBuffer.load(str(tmp_path / "missing"), config)


def test_compressed_frames_sample_and_reload_exactly(tmp_path):
    """frame_compression stores zlib blobs; every sample equals the raw ring's, across a
    wrap-around, and a saved buffer loads into either format."""
    rng = np.random.default_rng(0)
    buffers = {}
    for level in (0, 3):
        config = make_config(replay_capacity=40, frame_compression=level)
        buffers[level] = ReplayBuffer(config, (4, 4, 3), np.uint8, A, 2)
    for _ in range(5):                                   # 2 lockstep envs,
                                                         # episodes of 9 and 9 steps
        first = rng.integers(0, 4, (2, 4, 4, 3), dtype=np.uint8)
        steps = [(rng.integers(0, A, 2), rng.integers(0, 4, (2, 4, 4, 3), dtype=np.uint8))
                 for _ in range(9)]
        for buffer in buffers.values():
            buffer.begin_episodes(np.arange(2), first)
            for t, (actions, frames) in enumerate(steps):
                buffer.add_step(actions, np.ones(2, np.float32), frames, np.full(2, t == 8),
                                np.zeros(2, bool), np.zeros(2),
                                np.full((2, A), 1 / A, np.float32), t)
    raw, compressed = buffers[0], buffers[3]
    assert len(raw) == len(compressed) == 36 and raw.num_added == 90
    assert compressed.nbytes() < raw.nbytes()

    def assert_same_samples(a, b):
        for x, y in zip(a.sample(64, np.random.default_rng(1)),
                        b.sample(64, np.random.default_rng(1))):
            np.testing.assert_array_equal(x, y)

    assert_same_samples(raw, compressed)
    for saved, level in ((compressed, 0), (raw, 3), (compressed, 3)):
        folder = str(tmp_path / f"from{saved.config.frame_compression}-to{level}")
        saved.save(folder)
        loaded = ReplayBuffer.load(folder, make_config(replay_capacity=40, frame_compression=level))
        assert_same_samples(raw, loaded)


def test_atari_frames_stack_channels_oldest_first():
    config = dataclasses.replace(cfg.smoke(), frame_stack=4, unroll_steps=2, td_steps=2,
                                 replay_capacity=50)
    buffer = ReplayBuffer(config, (2, 2, 3), np.uint8, 4, 1)
    buffer.begin_episodes(np.array([0]), np.zeros((1, 2, 2, 3), np.uint8))
    for t in range(6):
        buffer.add_step(np.array([0]), np.zeros(1, np.float32),
                        np.full((1, 2, 2, 3), t + 1, np.uint8), np.array([t == 5]),
                        np.array([False]), np.zeros(1), np.full((1, 4), 0.25, np.float32), t)
    assert buffer.nbytes() < (1.1 * 50 * 2 * 2 * 3 + 50 * (4 * 4 + 64)
                              + buffer.priorities.nodes.nbytes)
    batch = buffer.sample(20, np.random.default_rng(0))
    assert batch.frames.shape == (20, 4 - 1 + 2 + 2 + 1, 2, 2, 3)
    observations = stacked(batch, config)                           # [B, K+n+1, 2, 2, 12]
    for b in range(20):
        t = int(observations[b, 0, 0, 0, -1])
        for k in range(5):
            expected = [min(max(t + k - 3 + s, 0), 6) for s in range(4)]
            np.testing.assert_array_equal(observations[b, k, 1, 1], np.repeat(expected, 3))


# --- learning while games run (replay_open_games) -------------------------------------------------

def _frame(env, game, t):
    return env * 100_000.0 + game * 1000.0 + t


@pytest.mark.parametrize("frame_stack", [1, 3])
def test_running_games_give_the_positions_and_targets_of_the_whole_episode_store(frame_stack):
    """Two lockstep envs play games of random lengths, ended by a terminal or a truncation, into a
    store that samples running games and into the whole-episode store (`replay_open_games` false).
    While a game runs, exactly its positions t with t + K + n < T_so_far are sampleable; the batch a
    position gives then equals the one the whole-episode store gives for it once the game has
    ended: frames, actions, reward and TD pieces, masks, stored policies, weights, priority."""
    K, n = 5, 3
    changes = dict(frame_stack=frame_stack, replay_capacity=2000)
    streaming = ReplayBuffer(make_config(**changes), (1,), np.float32, A, 2)
    whole = ReplayBuffer(make_config(replay_open_games=False, **changes), (1,), np.float32, A, 2)
    rng = np.random.default_rng(0)
    games = [[(int(rng.choice([1, 4, 9, 10, 30, 45])), bool(rng.random() < 0.5)) for _ in range(40)]
             for _ in range(2)]
    game_index, t = [0, 0], [0, 0]
    for buffer in (streaming, whole):
        buffer.begin_episodes(np.arange(2), np.array([[_frame(0, 0, 0)], [_frame(1, 0, 0)]]))
    early = {}                                    # slot -> its batch, drawn while its game ran
    for step in range(150):
        actions = rng.integers(0, A, 2)
        rewards = rng.normal(size=2).astype(np.float32)
        policies = rng.dirichlet(np.ones(A), 2).astype(np.float32)
        terminated, truncated = np.zeros(2, bool), np.zeros(2, bool)
        next_frames = np.zeros((2, 1), np.float32)
        for env in range(2):
            t[env] += 1
            length, ends_by_terminal = games[env][game_index[env]]
            next_frames[env] = _frame(env, game_index[env], t[env])
            if t[env] == length:
                terminated[env], truncated[env] = ends_by_terminal, not ends_by_terminal
        for buffer in (streaming, whole):
            buffer.add_step(actions, rewards, next_frames, terminated, truncated,
                            rng.normal(size=2), policies, 2 * step)
        for env in range(2):
            if terminated[env] or truncated[env]:
                game_index[env], t[env] = game_index[env] + 1, 0
                for buffer in (streaming, whole):
                    buffer.begin_episodes(np.array([env]),
                                          np.array([[_frame(env, game_index[env], 0)]]))
                continue
            start = streaming.game_start[env]
            ordinals = np.arange(start, start + t[env])
            due = streaming.priorities.get(streaming.slot_of(env, ordinals)) > 0
            np.testing.assert_array_equal(due, np.arange(t[env]) + K + n < t[env])
            for slot in streaming.slot_of(env, ordinals[due]).tolist():
                if slot not in early:
                    early[slot] = streaming.batch_at(np.array([slot]), np.ones(1),
                                                     np.random.default_rng(slot))
    for buffer in (streaming, whole):
        buffer.begin_episodes(np.arange(2), np.zeros((2, 1), np.float32))  # the open games end
    assert len(early) > 50
    slots = np.arange(streaming.capacity)
    np.testing.assert_array_equal(streaming.priorities.get(slots), whole.priorities.get(slots))
    assert len(streaming) == len(whole) > len(early)
    for slot, batch in early.items():
        late = whole.batch_at(np.array([slot]), np.ones(1), np.random.default_rng(slot))
        for name in Batch._fields:
            if name != "newest_env_step":
                np.testing.assert_array_equal(getattr(batch, name), getattr(late, name), name)


def test_a_game_longer_than_its_region_loses_only_its_oldest_positions():
    """One env, 24 slots, a 60-step game: at every step the sampleable positions are those whose
    oldest frame is still stored and whose targets' steps exist, and each equals the reference."""
    config = make_config(replay_capacity=24)
    K, n = config.unroll_steps, config.td_steps
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    buffer.begin_episodes(np.array([0]), np.array([[0.0]], np.float32))
    for t in range(60):
        buffer.add_step(np.array([t % A]), np.array([1.0], np.float32),
                        np.array([[t + 1.0]], np.float32), np.array([t == 59]), np.array([False]),
                        np.array([0.0]), acting_policy(t)[None], t)
        played = t + 1
        oldest_frame = max(0, played + 1 - 24)
        due = [p for p in range(played) if max(p - S + 1, 0) >= oldest_frame
               and (p + K + n < played or played == 60)]
        stored = [p for p in range(oldest_frame, played) if buffer.priorities.get(p % 24) > 0]
        assert stored == due, t
        assert len(buffer) == len(due)
    batch = buffer.sample(100, np.random.default_rng(0))
    observations = stacked(batch, config)
    for b in range(100):
        t = int(observations[b, 0, -1])
        obs, masks, value_masks, prefix, _ = reference_targets(config, 60, True, t, 0,
                                                               lambda j: 0.0)
        np.testing.assert_array_equal(observations[b], obs)
        np.testing.assert_array_equal(batch.value_masks[b], value_masks)


def test_priorities_of_positions_gone_since_their_batch_was_drawn_are_not_written():
    """The batch's positions (game 0, slots 0..5) are overwritten before its priorities come back:
    slot 0 by game 2's o_T, slots 1..5 by game 3's positions, which keep the priority they came
    with."""
    config = make_config(replay_capacity=20)
    buffer = ReplayBuffer(config, (1,), np.float32, A, 1)
    fill(buffer, [(6, True)])
    batch = buffer.sample(8, np.random.default_rng(0))
    assert set(batch.indices.tolist()) == set(range(6))
    fill(buffer, [(6, True)] * 3)                                       # ordinals 7..27
    before = buffer.priorities.get(np.arange(20))
    np.testing.assert_array_equal(before[:8], [0, 1, 1, 1, 1, 1, 1, 0])
    buffer.update_priorities(batch.indices, np.full(8, 5.0), batch.collected_at)
    np.testing.assert_array_equal(buffer.priorities.get(np.arange(20)), before)
    buffer.update_priorities(np.arange(1, 6), np.full(5, 5.0), buffer.collected_at[1:6])
    np.testing.assert_array_equal(buffer.priorities.get(np.arange(1, 6)), 5.0)
