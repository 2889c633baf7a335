"""EfficientZero V2's sampling-based Gumbel search for continuous actions, batched, in NumPy alone.

The paper's third ingredient (Wang et al. 2024, "sampling-based Gumbel search"; it builds on Sampled
MuZero, Hubert et al. 2021): the root searches over K actions sampled from the policy instead of
over every action, and each interior node over C actions sampled from its own policy. The semantics
are the official DMC path's (`ez/mcts/cy_mcts.py: CyMCTS.search_continuous`, the C++ tree
`ez/mcts/ctree/cnode.cpp`, `cminimax.cpp`); the discrete search in mcts.py follows mctx instead.

Shapes: B trees, K root candidates, C children per interior node, A action dimensions. A tree holds
M = 1 + K + C·n nodes: node 0 is the root, nodes 1..K its candidates, and simulation s, expanding
one leaf, appends that leaf's C children. The search takes them as given, so it is a pure
function: the caller draws the root's candidates (`root_candidates`), and its `recurrent_fn`
returns each new node's C children (`sample_squashed` from that node's policy).

- Root: at the first simulation the kept set is the m candidates with the highest g + logit (a
  stable order, as the official std::sort of at most 16); every simulation visits the kept
  candidate with the fewest visits, the first on ties. After the simulations `halving_schedule`
  names, the kept set shrinks to its better half by g + logit + σ(q̂).
- Interior nodes: argmax_c π′(c) − N(c) / (1 + N_node), π′ = softmax(logits + σ(q̂)), N_node the
  node's own visit count (1 + its children's).
- Backup: a node's value is the mean of its network value and every return backed up through it;
  Q(c) = r(c) + γ·value(c). Each simulation folds every return r + γ·G on its path, the root's γ·G
  included, into one min/max per tree.
- q̂: (Q − min) / max(max − min, value_delta_max) when max > min, else Q itself; clipped to [0, 1].
  An unexpanded child's Q is the official mixed value
  v_mix = (value(node) + N_node · Σ_expanded π(c) Q(c) / Σ_expanded π(c)) / (1 + N_node), π the
  softmax of the children's logits (value(node) when no child is expanded).
- σ(q̂) = (c_visit + max_c N(c)) · c_scale · q̂.
- Output: the root's value (SVE), the improved policy softmax(logits + σ(q̂)) over the candidates,
  and the acted candidate: the first of the kept set after the last halving.
The official code gives every candidate and child the logit 0 and no Gumbel noise; both are inputs
here (`candidate_logits`, `gumbel`, and each child's logit from `recurrent_fn`) for the paper's
variant.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from mcts import as_leaves, gather_states, softmax

# The official tree's min/max start values (cminimax.h: FLOAT_MAX, FLOAT_MIN = -FLOAT_MAX) and the
# floor below which no child counts as expanded in the mixed value (EPSILON).
MINMAX_START = np.float32(1e6)
MIX_EPSILON = np.float32(1e-6)


class SampledSearchOutput(NamedTuple):
    root_value: np.ndarray        # [B] float32 search-based value estimate (SVE)
    improved_policy: np.ndarray   # [B, K] float32 softmax(logits + σ(q̂)) over the candidates
    chosen: np.ndarray            # [B] int index of the acted candidate
    action: np.ndarray            # [B, A] float32 the acted candidate, candidates[b, chosen[b]]
    visit_counts: np.ndarray      # [B, K] int visits of each candidate
    completed_q: np.ndarray       # [B, K] float32 each candidate's Q, v_mix where unexpanded
    candidates: np.ndarray        # [B, K, A] float32 the root's candidates


def halving_schedule(num_simulations: int, num_considered: int) -> dict[int, int]:
    """{simulation index: kept-set size after it}: when the root's kept set is halved, counted as
    the official code counts (`ez/mcts/base.py` MCTS.__init__ and `cy_mcts.py`
    ready_for_next_gumble_phase): a phase with m′ kept candidates lasts max(1, floor(n / (log2(m) ·
    m′))) · m′ simulations while m′ > 2, and the phase after it takes what is left.
    E.g. n=32, m=16: {15: 8, 23: 4, 31: 2}, so each kept candidate gets 1, 1, then 2 visits."""
    n, m = num_simulations, num_considered
    schedule, kept, used = {}, m, 0
    next_phase = max(math.floor(n / (math.log2(m) * m)), 1) * m if m > 1 else n
    for simulation in range(n):
        if simulation + 1 < next_phase or kept == 1:
            continue
        kept //= 2
        extra = max(math.floor(n / (math.log2(m) * kept)), 1) * kept if kept > 2 else n - used
        used += extra
        next_phase = min(next_phase + extra, n)
        schedule[simulation] = kept
    return schedule


def sample_squashed(mean: np.ndarray, std: np.ndarray, rng: np.random.Generator, count: int,
                    clip: float) -> np.ndarray:
    """`count` actions per row from tanh(Normal(μ, σ)), each dimension independent, clipped to
    ±clip: mean, std [B, A] -> [B, count, A] float32. The children of a node are sampled so."""
    noise = rng.standard_normal((mean.shape[0], count, mean.shape[1]))
    return np.clip(np.tanh(mean[:, None] + std[:, None] * noise), -clip, clip).astype(np.float32)


def root_candidates(mean: np.ndarray, std: np.ndarray, rng: np.random.Generator, *,
                    from_policy: int, widened: int, widening: float, clip: float,
                    explore: bool) -> np.ndarray:
    """The root's K = from_policy + widened candidates [B, K, A] (official
    `CyMCTS.sample_actions`): exploring (self-play, reanalysis), the first from_policy from π and
    the rest from π with σ times `widening` (before the tanh); in evaluation all K from π."""
    policy = sample_squashed(mean, std, rng, from_policy, clip)
    scale = widening if explore else 1.0
    return np.concatenate([policy, sample_squashed(mean, scale * std, rng, widened, clip)], axis=1)


def corrected_candidate_logits(mean: np.ndarray, std: np.ndarray, candidates: np.ndarray, *,
                               from_policy: int, widening: float) -> np.ndarray:
    """The paper's sampling-corrected prior over the root's candidates [B, K, A]: the logits
    log π(a) − log β(a), β the proposal the candidates were drawn from, taken as the official code
    writes it (`CyMCTS.sample_actions`, its `probs`, computed there but unused): log β = r log π +
    (1 − r) log π_w, r = from_policy / K, π_w the widened Gaussian. The tanh's Jacobian cancels, so
    the logits are (1 − r) Σ_d [log N(x; μ, σ) − log N(x; μ, widening·σ)], x = atanh a: [B, K]."""
    share = from_policy / candidates.shape[1]
    x = np.arctanh(candidates.astype(np.float64))                      # [B, K, A]
    mean, std = mean[:, None].astype(np.float64), std[:, None].astype(np.float64)
    z, z_widened = (x - mean) / std, (x - mean) / (widening * std)
    log_ratio = -0.5 * (z ** 2 - z_widened ** 2) + np.log(widening)   # log N(σ) − log N(wσ)
    return ((1 - share) * log_ratio.sum(-1)).astype(np.float32)


class _SampledTrees:
    """B trees of M nodes as [B, M] arrays; a node's children are contiguous from first_child."""

    def __init__(self, batch: int, num_nodes: int, *, discount: float, c_visit: float,
                 c_scale: float, value_delta_max: float):
        shape = (batch, num_nodes)
        self.lanes = np.arange(batch)
        self.discount = np.float32(discount)
        self.c_visit, self.c_scale = np.float32(c_visit), np.float32(c_scale)
        self.value_delta_max = np.float32(value_delta_max)
        self.first_child = np.full(shape, -1, np.int64)     # [B, M] -1 while unexpanded
        self.num_children = np.zeros(shape, np.int64)      # [B, M]
        self.visits = np.zeros(shape, np.int64)            # [B, M] N: backups through the node
        self.value_sum = np.zeros(shape, np.float32)       # [B, M] sum of those backed-up values
        self.reward = np.zeros(shape, np.float32)          # [B, M] r̂ of the step into the node
        self.logit = np.zeros(shape, np.float32)           # [B, M] its prior logit as a child
        self.state_slot = np.zeros(shape, np.int64)        # [B, M] where its state is in the pool
        self.size = np.ones(batch, np.int64)               # [B] nodes in use
        self.q_low = np.full(batch, MINMAX_START, np.float32)       # [B] tree-wide min of Q
        self.q_high = np.full(batch, -MINMAX_START, np.float32)     # [B] and max

    def add_children(self, lanes: np.ndarray, nodes: np.ndarray, logits: np.ndarray) -> None:
        """Expand node nodes[i] of tree lanes[i] with children of prior logits [L, C]."""
        count = logits.shape[1]
        first = self.size[lanes]
        self.first_child[lanes, nodes] = first
        self.num_children[lanes, nodes] = count
        children = first[:, None] + np.arange(count)                    # [L, C]
        self.logit[lanes[:, None], children] = logits
        self.size[lanes] += count

    def value(self, lanes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """[L] float32, as the official tree computes it: Q's near-equal differences in the range
        are sensitive to the rounding."""
        return self.value_sum[lanes, nodes] / self.visits[lanes, nodes].astype(np.float32)

    def children(self, lanes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """[L, C] the children of nodes[i] in tree lanes[i] (all have the same count here)."""
        count = int(self.num_children[lanes[0], nodes[0]])
        return self.first_child[lanes, nodes][:, None] + np.arange(count)

    def sigma(self, lanes: np.ndarray, nodes: np.ndarray):
        """σ(q̂) [L, C] of the children of nodes[i] in tree lanes[i], with their completed Q [L, C]
        (r + γ·value for an expanded child, the node's v_mix for the others), visits and logits."""
        children = self.children(lanes, nodes)                          # [L, C]
        rows = lanes[:, None]
        visits = self.visits[rows, children]                            # [L, C]
        expanded = self.first_child[rows, children] >= 0
        child_value = self.value_sum[rows, children] / np.maximum(visits, 1).astype(np.float32)
        q = self.reward[rows, children] + self.discount * child_value
        logits = self.logit[rows, children]
        prior = softmax(logits, axis=1)
        weight = np.where(expanded, prior, 0).sum(axis=1)               # [L]
        weighted_q = np.where(expanded, prior * q, 0).sum(axis=1)
        node_visits = self.visits[lanes, nodes].astype(np.float32)
        node_value = self.value(lanes, nodes)
        mixed = np.where(weight < MIX_EPSILON, node_value,
                         (node_value + node_visits * weighted_q / np.maximum(weight, MIX_EPSILON))
                         / (1 + node_visits))
        completed = np.where(expanded, q, mixed[:, None]).astype(np.float32)
        low, high = self.q_low[lanes][:, None], self.q_high[lanes][:, None]
        spread = high - low
        scale = np.maximum(spread, self.value_delta_max)
        normalized = np.where(spread > 0, (completed - low) / scale, completed)
        normalized = np.clip(normalized, 0, 1)
        sigma = (self.c_visit + visits.max(axis=1, keepdims=True)) * self.c_scale * normalized
        return sigma, completed, visits, logits

    def interior_choice(self, lanes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """[L] the child that nodes[i] of tree lanes[i] visits next."""
        sigma, _, visits, logits = self.sigma(lanes, nodes)
        improved = softmax(logits + sigma, axis=1)
        node_visits = self.visits[lanes, nodes][:, None].astype(np.float32)
        score = improved - visits / (1 + node_visits)
        return self.children(lanes, nodes)[np.arange(len(lanes)), score.argmax(axis=1)]

    def backup(self, path: np.ndarray, depth: np.ndarray, leaf_value: np.ndarray) -> None:
        """Back leaf_value [B] up each path [B, D] (nodes path[b, :depth[b] + 1], leaf last)."""
        returns = leaf_value.astype(np.float32)
        for level in range(path.shape[1] - 1, -1, -1):
            lanes = np.flatnonzero(depth >= level)
            node = path[lanes, level]
            self.value_sum[lanes, node] += returns[lanes]
            self.visits[lanes, node] += 1
            returns[lanes] = self.reward[lanes, node] + self.discount * returns[lanes]
            self.q_low[lanes] = np.minimum(self.q_low[lanes], returns[lanes])
            self.q_high[lanes] = np.maximum(self.q_high[lanes], returns[lanes])


def _ranked(kept: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """The first `size` of kept [B, m] by scores [B, m], highest first, ties in kept order."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :size]
    return np.take_along_axis(kept, order, axis=1)


def sampled_search(root_value: np.ndarray, root_state, candidates: np.ndarray,
                   recurrent_fn: Callable, *, num_simulations: int, discount: float,
                   num_children: int = 2, c_visit: float = 50.0, c_scale: float = 0.1,
                   value_delta_max: float = 0.01, num_considered: int | None = None,
                   gumbel: np.ndarray | None = None,
                   candidate_logits: np.ndarray | None = None) -> SampledSearchOutput:
    """Run `num_simulations` simulations of B trees in lockstep; a pure function of its inputs.

    root_value [B]; root_state an array or a tuple of arrays, batch first; candidates [B, K, A];
    recurrent_fn(state, actions [B, A]) -> (next_state, reward [B], value [B], children [B, C, A],
    children_logits [B, C] or None for zeros): the model's step, and the C = num_children actions
    sampled from the new node's policy for its children. num_considered: the root's first kept
    set, m (default K); gumbel [B, K] and candidate_logits [B, K] default to zeros, as in the
    official code.
    """
    root_value = np.asarray(root_value, np.float32)
    candidates = np.asarray(candidates, np.float32)
    batch, num_candidates, action_dims = candidates.shape
    kept_size = num_candidates if num_considered is None else num_considered
    if not 1 <= kept_size <= num_candidates:
        raise ValueError(f"num_considered must be in 1..{num_candidates}, got {kept_size}")
    zeros = np.zeros((batch, num_candidates), np.float32)
    gumbel = zeros if gumbel is None else np.asarray(gumbel, np.float32)
    candidate_logits = (zeros if candidate_logits is None
                        else np.asarray(candidate_logits, np.float32))
    lanes, roots = np.arange(batch), np.zeros(batch, np.int64)
    trees = _SampledTrees(batch, 1 + num_candidates + num_children * num_simulations,
                          discount=discount, c_visit=c_visit, c_scale=c_scale,
                          value_delta_max=value_delta_max)
    trees.add_children(lanes, roots, candidate_logits)
    trees.visits[:, 0] = 1
    trees.value_sum[:, 0] = root_value
    actions = np.zeros((batch, trees.first_child.shape[1], action_dims), np.float32)  # [B, M, A]
    actions[:, 1:1 + num_candidates] = candidates
    schedule = halving_schedule(num_simulations, kept_size)
    # The root's kept set, as node ids [B, m]: the best m by g + logit, ties in candidate order.
    kept = _ranked(np.broadcast_to(np.arange(1, num_candidates + 1), (batch, num_candidates)),
                   gumbel + candidate_logits, kept_size)
    state_pool = [as_leaves(root_state)]
    for simulation in range(num_simulations):
        # Selection: the kept candidate with the fewest visits (the first on ties), then the
        # interior choices down to a node not yet expanded.
        path = [roots, kept[lanes, trees.visits[lanes[:, None], kept].argmin(axis=1)]]
        depth = np.ones(batch, np.int64)
        while True:
            inner = np.flatnonzero(trees.first_child[lanes, path[-1]] >= 0)
            if len(inner) == 0:
                break
            step = path[-1].copy()
            step[inner] = trees.interior_choice(inner, step[inner])
            depth[inner] += 1
            path.append(step)
        path = np.stack(path, axis=1)                                          # [B, D]
        leaf, parent = path[lanes, depth], path[lanes, depth - 1]
        parent_states = gather_states(state_pool, trees.state_slot[lanes, parent])
        next_state, reward, value, children, children_logits = recurrent_fn(
            parent_states if isinstance(root_state, tuple) else parent_states[0],
            actions[lanes, leaf])
        children = np.asarray(children, np.float32)
        if children.shape != (batch, num_children, action_dims):
            raise ValueError(f"recurrent_fn gave children of shape {children.shape}, expected "
                             f"{(batch, num_children, action_dims)}")
        # Expansion and backup.
        state_pool.append(as_leaves(next_state))
        trees.state_slot[lanes, leaf] = simulation + 1
        trees.reward[lanes, leaf] = reward
        first = trees.size.copy()
        trees.add_children(lanes, leaf, np.zeros((batch, num_children), np.float32)
                           if children_logits is None else np.asarray(children_logits, np.float32))
        actions[lanes[:, None], first[:, None] + np.arange(num_children)] = children
        trees.backup(path, depth, np.asarray(value, np.float32))
        if simulation in schedule:
            candidate = kept - 1
            sigma, _, _, _ = trees.sigma(lanes, roots)
            scores = np.take_along_axis(gumbel + candidate_logits + sigma, candidate, axis=1)
            kept = _ranked(kept, scores, schedule[simulation])
    sigma, completed, visits, logits = trees.sigma(lanes, roots)
    chosen = kept[:, 0] - 1
    return SampledSearchOutput(
        root_value=trees.value(lanes, roots), improved_policy=softmax(logits + sigma, axis=1),
        chosen=chosen, action=candidates[lanes, chosen], visit_counts=visits,
        completed_q=completed, candidates=candidates)


def search_with_sampled_model(model, root, rng: np.random.Generator, *, explore: bool,
                              num_simulations: int, discount: float, num_children: int,
                              c_visit: float, c_scale: float, value_delta_max: float,
                              policy_candidates: int, widened_candidates: int,
                              candidate_std_widening: float, action_clip: float,
                              num_considered: int | None = None, gumbel_scale: float = 0.0,
                              corrected_prior: bool = False) -> SampledSearchOutput:
    """`sampled_search` from a model's root output (fields state, value, policy_mean, policy_std:
    networks.GaussianOutput): the root's candidates from `root_candidates` (widened when
    `explore`: self-play and reanalysis), each new node's children sampled from its own π by
    `model.recurrent_inference`, all draws from `rng`. The official search gives the candidates a
    uniform prior and no Gumbel noise; the paper's variant, when exploring, adds Gumbel noise of
    `gumbel_scale` and, with `corrected_prior`, the logits of `corrected_candidate_logits`. The
    keyword arguments come from config.sampled_search_options()."""

    def recurrent_fn(state, actions):
        output = model.recurrent_inference(state, actions)
        children = sample_squashed(output.policy_mean, output.policy_std, rng, num_children,
                                   action_clip)
        return output.state, output.reward, output.value, children, None

    candidates = root_candidates(root.policy_mean, root.policy_std, rng,
                                 from_policy=policy_candidates, widened=widened_candidates,
                                 widening=candidate_std_widening, clip=action_clip,
                                 explore=explore)
    gumbel = logits = None
    if explore and gumbel_scale > 0:
        gumbel = (gumbel_scale * rng.gumbel(size=candidates.shape[:2])).astype(np.float32)
    if explore and corrected_prior:
        logits = corrected_candidate_logits(root.policy_mean, root.policy_std, candidates,
                                            from_policy=policy_candidates,
                                            widening=candidate_std_widening)
    return sampled_search(root.value, root.state, candidates, recurrent_fn,
                          num_simulations=num_simulations, discount=discount,
                          num_children=num_children, c_visit=c_visit, c_scale=c_scale,
                          value_delta_max=value_delta_max, num_considered=num_considered,
                          gumbel=gumbel, candidate_logits=logits)


def sampled_search_actions(model, observations: np.ndarray, search_options: dict,
                           rng: np.random.Generator, explore: bool) -> SampledSearchOutput:
    """The acting search for continuous actions: one batched sampled search from the model's root
    outputs for observations [B, ...]; self-play explores (widened candidates), evaluation does
    not (all candidates from π, as the official eval)."""
    root = model.initial_inference(observations)
    return search_with_sampled_model(model, root, rng, explore=explore, **search_options)
