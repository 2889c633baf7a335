"""Target construction of EfficientZero V2 (arXiv 2403.00564): value prefixes, n-step TD pieces,
reanalysis and the mixed value rule.

- Value prefix (EfficientZero, Ye et al. 2021, Sec. 4.2): the reward head of unroll step k predicts
  the sum of rewards since the LSTM's last restart (every `lstm_horizon_len` steps), not the single
  reward; `value_prefix_targets` builds those targets from the sampled rewards. The other places it
  lives: networks.RewardHead (the LSTM head), learner.Learner (the restart inside the unroll) and
  networks.EfficientZeroNet.recurrent_graph (the search reads each edge's reward as the difference
  of consecutive prefixes).
- TD pieces (`td_pieces`): the reward sums and bootstrap positions/discounts of the n-step targets
  z_{t+k} = Σ_{i<n} γ^i u_{t+k+i} + γ^n v(o_{t+k+n}), with no bootstrap past a terminal and v(o_T)
  with γ^(T-t-k) past a truncation (the episode-end semantics of buffer.py).
- Reanalysis (`reanalyze`): one batched initial inference of the target model over the positions
  the samples need (`_inference_windows`: the roots t..t+K of the searched samples and the
  bootstraps t+n..t+K+n of all, as one window of K+n+1 positions when they overlap, as separate
  windows of K+1 when n > K+1; the frames are stacked inside the graph), one batched Gumbel search
  (mcts.py, with Gumbel noise as in the official code) over the (K+1) roots of each reanalysed
  sample (a random `reanalyze_ratio` share of the batch: 0.1 in the `minatar` and `atari_cpu`
  presets, 1.0 in the others and in the official Atari config):
  policy targets are the improved policies, search-based value estimates (SVE) the search
  root values; samples not reanalysed keep the stored acting policies.
- Mixed value rule (`search_value_mask`): the TD target while fewer than
  `sve_start_updates` (T1) updates are done or the sample is among the newest
  `td_newest_transitions` (T2), the SVE otherwise.
- Diagnostics logged while a run goes: the reanalysis search's (`search_diagnostics`: the prior's
  entropy, the root Q gap, ...) and the model's on a sampled batch (`model_diagnostics`: the
  dynamics' action difference, the reward accuracy on the steps that score).

Shapes: `B` batch, `K` unroll steps, `n` td_steps, `A` actions.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from config import Config
from mcts import TimedModel, sample_gumbel, search_with_model
from mcts_sampled import search_with_sampled_model


class Targets(NamedTuple):
    values: np.ndarray                  # [B, K+1] mixed value targets
    policies: np.ndarray                # [B, K+1, A] improved policies (uniform past the end);
                                        # continuous: [B, K+1, C] over the C root candidates
    sve_fraction: float                 # share of value targets from the search
    diagnostics: dict                   # the reanalysis search's diagnostics/*
    network_seconds: float              # reanalysis time in network calls
    tree_seconds: float                 # reanalysis time in the tree search itself
    candidates: np.ndarray | None = None    # continuous: [B, K+1, C, A] the root candidates
    best_actions: np.ndarray | None = None  # continuous: [B, K+1, A] the search's choice a*


class TDPieces(NamedTuple):
    rewards: np.ndarray                 # [B, K+1] Σ_{i<n} γ^i u_{t+k+i} (0 past the end)
    bootstrap_positions: np.ndarray     # [B, K+1] int index into the K+n+1 positions
    bootstrap_discounts: np.ndarray     # [B, K+1] γ^steps, 0 where there is no bootstrap


def td_pieces(rewards: np.ndarray, offset: np.ndarray, length: np.ndarray, terminated: np.ndarray,
              config: Config) -> TDPieces:
    """The parts of the n-step TD targets z_{t+k} (k = 0..K) that need no network: rewards u_t.. of
    the K+n+1 positions [B, K+n+1] (0 past the end), the position t of each sample within its
    episode [B], the episode length T [B] and whether it terminated [B]. The bootstrap v(o_{t+k+n})
    comes from reanalysis: never past a terminal; v(o_T) with γ^(T-t-k) past a truncation."""
    K, n = config.unroll_steps, config.td_steps
    steps = offset[:, None] + np.arange(K + 1)                                 # [B, K+1] t+k
    discounts = config.discount ** np.arange(n)
    td_rewards = np.stack([rewards[:, k:k + n] @ discounts for k in range(K + 1)], axis=1)
    bootstrap_step = np.minimum(steps + n, length[:, None])                    # [B, K+1]
    bootstrap_discounts = config.discount ** (bootstrap_step - steps)
    no_bootstrap = ((steps >= length[:, None])
                    | (terminated[:, None] & (steps + n >= length[:, None])))
    return TDPieces(rewards=td_rewards.astype(np.float32),
                    bootstrap_positions=bootstrap_step - offset[:, None],
                    bootstrap_discounts=np.where(no_bootstrap, 0.0, bootstrap_discounts)
                    .astype(np.float32))


def value_prefix_targets(rewards: np.ndarray, config: Config) -> np.ndarray:
    """Rewards u_t..u_{t+K-1} [B, K] -> what the reward head of unroll steps 1..K predicts: the
    value prefix (EfficientZero: the sum of rewards since the LSTM's last restart, every
    `lstm_horizon_len` steps) or, without `value_prefix`, the reward itself."""
    if not config.value_prefix:
        return rewards.astype(np.float32)
    horizon = config.lstm_horizon_len
    prefix = np.zeros_like(rewards, np.float32)
    running = np.zeros(len(rewards), np.float32)
    for k in range(rewards.shape[1]):
        if k % horizon == 0:
            running = np.zeros(len(rewards), np.float32)
        running = running + rewards[:, k]
        prefix[:, k] = running
    return prefix


# --- reanalysis (EZ V2: search-based value estimation and the mixed value target) -----------------

def _rows(output, rows: np.ndarray):
    """The rows [R] of a network output (a state tuple, then arrays)."""
    return output._replace(state=tuple(s[rows] for s in output.state),
                           **{name: getattr(output, name)[rows] for name in output._fields
                              if name != "state"})


def _concatenate(outputs: list):
    """Network outputs of consecutive chunks (fields: a state tuple, then arrays) -> one output."""
    first = outputs[0]
    state = tuple(np.concatenate(parts) for parts in zip(*(o.state for o in outputs)))
    return first._replace(state=state, **{name: np.concatenate([getattr(o, name) for o in outputs])
                                          for name in first._fields if name != "state"})


class InferenceWindows(NamedTuple):
    frames: np.ndarray                  # [N, S-1+W, *frame] single frames
                                        # of N windows of W positions
    positions: int                      # W
    root_rows: np.ndarray               # [R, K+1] row of root t+k of each reanalysed sample in the
                                        # flat [N·W] inference
    bootstrap_rows: np.ndarray          # [B, K+1] row of the bootstrap of target k there


def _one_window(config: Config) -> bool:
    """Whether reanalysis infers all K+n+1 sampled positions as one window per sample: when that
    costs no more than K+1 bootstraps per sample and K+1 roots per searched sample (the roots
    t..t+K and the bootstraps from t+n overlap or touch, n <= K+1, and most samples are
    searched)."""
    K = config.unroll_steps
    return K + config.td_steps + 1 <= (K + 1) * (1.0 + config.reanalyze_ratio)


def searched_samples(config: Config, batch_size: int) -> int:
    """How many of a batch's samples reanalysis searches afresh: the `reanalyze_ratio` share."""
    return int(round(config.reanalyze_ratio * batch_size))


def _window_layout(config: Config) -> tuple[int, int]:
    """(windows, positions per window) that `_inference_windows` makes of a `batch_size` batch: one
    window of all K+n+1 positions per sample, or one of K+1 bootstraps per sample and one of K+1
    roots per searched sample."""
    K, B = config.unroll_steps, config.batch_size
    if _one_window(config):
        return B, K + config.td_steps + 1
    return B + searched_samples(config, B), K + 1


def _windows_per_call(config: Config, positions: int) -> int:
    """How many inference windows of `positions` positions go to one representation call."""
    return max(1, config.reanalysis_chunk_size // positions)


def initial_inferences_per_sample(config: Config) -> float:
    """How many positions of a sample reanalysis infers on average (`_inference_windows`)."""
    windows, positions = _window_layout(config)
    return windows * positions / config.batch_size


def initial_inference_calls(config: Config) -> int:
    """How many representation calls reanalysis makes a batch."""
    windows, positions = _window_layout(config)
    return math.ceil(windows / _windows_per_call(config, positions))


def _inference_windows(batch, config: Config, reanalysed: np.ndarray) -> InferenceWindows:
    """The positions whose initial inference reanalysis needs, out of the K+n+1 sampled ones: the
    bootstraps of every sample and the roots of the `reanalysed` ones ([B] bool).

    The roots are positions 0..K; the bootstrap of target k is position min(k + n, T - t), so the
    bootstraps lie in the K+1 positions from min(n, T - t) (the first target's bootstrap). When
    `_one_window` (n <= K+1 and most samples searched) all K+n+1 positions form one window per
    sample; else each sample gives a window of K+1 bootstrap positions and each reanalysed sample
    one of K+1 roots, which is what makes a long TD horizon cost what a short one does (and a
    sample that is not reanalysed costs only its bootstraps). The two ways give the same
    targets (`tests/test_buffer.py`).
    Frames past the episode's end are already clamped to o_T by the buffer, so every window lies
    inside the sampled frames."""
    K, S = config.unroll_steps, config.frame_stack
    B = len(batch.bootstrap_positions)
    P = batch.frames.shape[1] - S + 1                                      # K+n+1
    if _one_window(config):
        rows = np.arange(B)[:, None] * P
        return InferenceWindows(frames=batch.frames, positions=P,
                                root_rows=(rows + np.arange(K + 1))[reanalysed],
                                bootstrap_rows=rows + batch.bootstrap_positions)
    W = K + 1
    first = batch.bootstrap_positions[:, :1]                                # [B, 1] min(n, T-t)
    # Whole frames by (row, position): ~100x faster than take_along_axis on image frames.
    bootstrap_frames = batch.frames[np.arange(B)[:, None], first + np.arange(S - 1 + W)]
    root_frames = batch.frames[reanalysed, :S - 1 + W]
    R = len(root_frames)
    return InferenceWindows(frames=np.concatenate([root_frames, bootstrap_frames]), positions=W,
                            root_rows=np.arange(R)[:, None] * W + np.arange(W),
                            bootstrap_rows=R * W + np.arange(B)[:, None] * W
                            + batch.bootstrap_positions - first)


def search_value_mask(config: Config, updates: int, collected_at: np.ndarray,
                      newest_env_step: int) -> np.ndarray:
    """EZ V2's mixed value rule: [B] True where the SVE replaces the TD target, i.e. after
    `sve_start_updates` (T1) updates and outside the newest `td_newest_transitions` (T2)."""
    if not config.use_search_value or updates < config.sve_start_updates:
        return np.zeros(len(collected_at), bool)
    return newest_env_step - collected_at >= config.td_newest_transitions \
        * config.steps_per_transition


def reanalyze(batch, model, *, config: Config, updates: int, rng: np.random.Generator) -> Targets:
    """Fresh policy targets and mixed value targets for `batch` (a buffer.Batch) with `model` (the
    target model), `updates` updates into the run.

    A random `reanalyze_ratio` share of the samples get a fresh search (policy targets, SVE); the
    rest keep the acting search's stored policies and TD values. Every sample's TD bootstraps come
    from the same initial inference as the roots. Continuous actions (batch.actions [B, K, A])
    take the sampled search (mcts_sampled.py) over fresh candidates, widened as in self-play (the
    official batch worker), and every sample is searched.
    """
    K = config.unroll_steps
    B, A = batch.stored_policies.shape[0], batch.stored_policies.shape[-1]
    continuous = batch.actions.ndim == 3
    if continuous and config.reanalyze_ratio < 1.0:
        raise ValueError("continuous actions need reanalyze_ratio=1: their acting candidates are "
                         "not stored")
    timed = TimedModel(model)
    start = time.perf_counter()
    reanalysed = np.ones(B, bool)
    if config.reanalyze_ratio < 1.0:
        reanalysed[rng.permutation(B)[searched_samples(config, B):]] = False
    windows = _inference_windows(batch, config, reanalysed)
    rows_per_call = _windows_per_call(config, windows.positions)
    output = _concatenate([timed.initial_inference_sequence(windows.frames[i:i + rows_per_call])
                           for i in range(0, len(windows.frames), rows_per_call)])
    td_values = batch.td_rewards + batch.bootstrap_discounts * output.value[windows.bootstrap_rows]
    policies = batch.stored_policies.copy()
    search_values = np.zeros((B, K + 1), np.float32)
    root = _rows(output, windows.root_rows.ravel())                          # [R·(K+1)] roots
    if continuous:
        search = search_with_sampled_model(timed, root, rng, explore=True,
                                           **config.sampled_search_options())
        C = search.improved_policy.shape[1]
        real = batch.transition_masks[:, :, None] > 0                        # [B, K+1, 1]
        policies = np.where(real, search.improved_policy.reshape(B, K + 1, C), np.float32(1 / C))
        search_values[:] = search.root_value.reshape(B, K + 1)
        real = real.ravel()
        diagnostics = sampled_search_diagnostics(root.policy_std[real], search.candidates[real],
                                                 search.improved_policy[real],
                                                 search.completed_q[real])
        extra = {"candidates": search.candidates.reshape(B, K + 1, C, -1),
                 "best_actions": search.action.reshape(B, K + 1, -1)}
    elif reanalysed.any():
        extra = {}
        rows = np.flatnonzero(reanalysed)
        gumbel = sample_gumbel(rng, root.policy_logits.shape, config.gumbel_scale)
        search = search_with_model(timed, root, gumbel, **config.search_options())
        uniform = np.float32(1.0 / A)
        policies[rows] = np.where(batch.transition_masks[rows, :, None] > 0,
                                  search.improved_policy.reshape(len(rows), K + 1, A), uniform)
        search_values[rows] = search.root_value.reshape(len(rows), K + 1)
        real = batch.transition_masks[rows].ravel() > 0
        diagnostics = search_diagnostics(root.policy_logits[real], search.improved_policy[real],
                                         search.completed_q[real])
    else:
        extra, diagnostics = {}, {}
    total = time.perf_counter() - start
    sve = reanalysed & search_value_mask(config, updates, batch.collected_at,
                                         batch.newest_env_step)
    # Past the last transition the target is 0: the absorbing value of a terminal o_T (trained), and
    # masked out for a truncated o_T and beyond (value_masks).
    mixed = np.where(sve[:, None], search_values, td_values) * batch.transition_masks
    return Targets(values=mixed.astype(np.float32), policies=policies.astype(np.float32),
                   sve_fraction=float(sve.mean()), diagnostics=diagnostics,
                   network_seconds=timed.seconds, tree_seconds=total - timed.seconds, **extra)


# Probabilities are floored here before a logarithm (a 0 term then contributes 0 · log floor = 0).
PROBABILITY_FLOOR = 1e-30
# model_diagnostics: a predicted reward counts as right within this of the true one (rewards of
# the image tasks are whole numbers: clipped Atari rewards, MinAtar's 0 and 1); and the floor of
# the latent's size it divides by (a latent of zeros would divide by 0).
REWARD_ACCURACY_TOLERANCE = 0.5
LATENT_SIZE_FLOOR = 1e-8


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """[R, A] -> [R] nats."""
    return -(probabilities * np.log(np.maximum(probabilities, PROBABILITY_FLOOR))).sum(axis=-1)


def search_diagnostics(prior_logits: np.ndarray, improved_policy: np.ndarray,
                       completed_q: np.ndarray) -> dict:
    """What reveals a policy collapse while it happens, over R reanalysed roots: the entropy of the
    target model's prior and of the improved policy (nats), the mean max − min prior logit, the mean
    KL(improved ‖ prior) (how far one search moves the policy target from the prior), and the mean
    gap between the best and the second-best completed Q. Inputs [R, A]."""
    if len(prior_logits) == 0:
        return {}
    shifted = prior_logits - prior_logits.max(axis=-1, keepdims=True)
    log_prior = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_improved = np.log(np.maximum(improved_policy, PROBABILITY_FLOOR))
    ordered_q = np.sort(completed_q, axis=-1)
    return {"diagnostics/prior_entropy": float(_entropy(np.exp(log_prior)).mean()),
            "diagnostics/logit_gap": float((prior_logits.max(-1) - prior_logits.min(-1)).mean()),
            "diagnostics/improved_policy_entropy": float(_entropy(improved_policy).mean()),
            "diagnostics/policy_improvement_kl":
                float((improved_policy * (log_improved - log_prior)).sum(axis=-1).mean()),
            "diagnostics/root_q_gap": float((ordered_q[:, -1] - ordered_q[:, -2]).mean())
            if completed_q.shape[-1] > 1 else 0.0}


def step_rewards(reward_targets: np.ndarray, config: Config) -> np.ndarray:
    """The inverse of `value_prefix_targets`: the targets of unroll steps 1..K [B, K] -> the
    rewards u_t..u_{t+K-1} [B, K]."""
    if not config.value_prefix:
        return reward_targets.astype(np.float32)
    previous = np.concatenate([np.zeros_like(reward_targets[:, :1]), reward_targets[:, :-1]], 1)
    restarts = np.arange(reward_targets.shape[1]) % config.lstm_horizon_len == 0
    return (reward_targets - np.where(restarts, 0.0, previous)).astype(np.float32)


def model_diagnostics(model, batch, config: Config) -> dict:
    """What shows whether the model learns while a run goes, on a sampled batch (discrete actions),
    by `model`'s inference at the roots o_t:

    - `diagnostics/action_difference`: how far apart the dynamics puts the actions, in % of the
      latent's size: the largest mean |g(s, a) − g(s, b)| over action pairs divided by the mean
      |g(s, a)|, averaged over the roots. Near 0, g has let go of the action and the search cannot
      tell the actions apart;
    - `diagnostics/reward_hit_accuracy`: over the unroll steps along the batch's actions whose
      reward is not 0 (a brick hit in Breakout), the share whose predicted reward (a difference of
      value prefixes) lies within 0.5 of it; left out when the batch holds no such step;
    - `diagnostics/reward_zero_accuracy`: the same over the steps whose reward is 0."""
    roots = model.initial_inference_sequence(batch.frames[:, :config.frame_stack])
    count, num_actions = len(batch.actions), roots.policy_logits.shape[-1]
    latents = [model.recurrent_inference(roots.state, np.full(count, a, np.int32)).state[0]
               .reshape(count, -1) for a in range(num_actions)]
    largest = np.zeros(count)
    for a in range(num_actions):
        for b in range(a + 1, num_actions):
            largest = np.maximum(largest, np.abs(latents[a] - latents[b]).mean(-1))
    size = np.mean([np.abs(latent).mean(-1) for latent in latents], axis=0)
    state, predicted = roots.state, []
    for k in range(config.unroll_steps):
        output = model.recurrent_inference(state, batch.actions[:, k])
        state = output.state
        predicted.append(output.reward)
    rewards = step_rewards(batch.reward_targets, config)
    correct = np.abs(np.stack(predicted, 1) - rewards) < REWARD_ACCURACY_TOLERANCE
    real = batch.transition_masks[:, :config.unroll_steps] > 0
    hit, zero = real & (rewards != 0), real & (rewards == 0)
    scalars = {"diagnostics/action_difference":
               float(100 * np.mean(largest / np.maximum(size, LATENT_SIZE_FLOOR)))}
    if hit.any():
        scalars["diagnostics/reward_hit_accuracy"] = float(correct[hit].mean())
    if zero.any():
        scalars["diagnostics/reward_zero_accuracy"] = float(correct[zero].mean())
    return scalars


def sampled_search_diagnostics(policy_std: np.ndarray, candidates: np.ndarray,
                               improved_policy: np.ndarray, completed_q: np.ndarray) -> dict:
    """The sampled search's counterpart of `search_diagnostics`, over R reanalysed roots: the
    target model's mean σ (before squashing) [R, A], the candidates' spread [R, C, A] (their std
    over the C candidates, averaged over dimensions), the improved policy's entropy [R, C] and the
    gap between the best and second-best completed Q [R, C]."""
    if len(policy_std) == 0:
        return {}
    ordered_q = np.sort(completed_q, axis=-1)
    return {"diagnostics/policy_std": float(policy_std.mean()),
            "diagnostics/candidate_spread": float(candidates.std(axis=1).mean()),
            "diagnostics/improved_policy_entropy": float(_entropy(improved_policy).mean()),
            "diagnostics/root_q_gap": float((ordered_q[:, -1] - ordered_q[:, -2]).mean())}
