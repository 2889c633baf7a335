"""Batched Gumbel MuZero tree search with sequential halving, in NumPy alone (blog topic ①).

Implements the search of "Policy improvement by planning with Gumbel" (Danihelka et al., ICLR 2022,
Appendix D) with the semantics of DeepMind's mctx `gumbel_muzero_policy` and
`qtransform_completed_by_mix_value` (DESIGN.md §5). B trees advance in lockstep, so each simulation makes
one batched `recurrent_fn` call for all of them: 4 trees when acting, B·(K+1) = 1,536 in reanalysis.

Shapes: B trees, A actions, N = num_simulations + 1 nodes per tree (node 0 is the root; simulation i
creates node i + 1). Per-edge arrays are stored flat as [B·N, A] so one fancy index gathers the edges of
any set of nodes; per-node arrays are [B, N]; search states are [B, N, ...] per array of the state tuple.

- Root (sequential halving): m = min(max_num_considered_actions, valid actions); the table of
  `considered_visits_sequence(m, n)` says, at simulation i, which visit count an action must have to be
  considered; among those, the root takes argmax g + logits + σ(q̂), g the Gumbel noise.
- Interior nodes: argmax_a π′(a) − N(a) / (1 + Σ_b N(b)), with π′ = softmax(logits + σ(q̂)).
- σ(q̂) = (c_visit + max_b N(b)) · c_scale · q̂, q̂ the node's completed Q rescaled to [0, 1] by its own
  min and max; unvisited actions are completed with the mixed value
  (v̂ + Σ_b N(b) · Σ_visited π(a) q(a) / Σ_visited π(a)) / (1 + Σ_b N(b)).
- Output: the action argmax g + logits + σ(q̂) among the most-visited actions, the improved policy
  softmax(logits + σ(q̂)), root visit counts, the root's completed Q (before rescaling) and the
  search-based value estimate (SVE): the root's mean of its network value and every backed-up return.

Differences from EfficientZero V2's official C++ tree (`ez/mcts/ctree`), which this project does not
follow: it min-max normalises Q over the whole tree instead of per node, and splits the simulation budget
into halving phases of its own; here the mctx semantics are exact (visit counts and actions identical,
policies equal to 1e-5).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

UNVISITED = -1
LOW_LOGIT = -1e9              # mctx's floor for scores, so masked logits never produce -inf - -inf
RESCALE_EPSILON = 1e-8        # guards min-max rescaling when all completed Q values are equal


class SearchOutput(NamedTuple):
    action: np.ndarray            # [B] int32
    improved_policy: np.ndarray   # [B, A] softmax(logits + σ(q̂)); invalid actions get 0
    visit_counts: np.ndarray      # [B, A] int32 root visit counts
    completed_q: np.ndarray       # [B, A] root Q, unvisited actions completed by the mixed value
    root_value: np.ndarray        # [B] search-based value estimate (SVE)


def sample_gumbel(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """Gumbel(0, 1) noise times `scale`, float32."""
    return (scale * rng.gumbel(size=shape)).astype(np.float32)


def considered_visits_sequence(max_num_considered_actions: int, num_simulations: int) -> tuple:
    """Sequential halving: the visit count an action must have to be considered at each simulation.

    Each phase gives every remaining action max(1, floor(n / (ceil(log2 m) · remaining))) visits,
    then keeps the better half (at least 2). E.g. m=8, n=24: 0×8, 1×4, 2×4, 3,3,4,4,5,5,6,6.
    """
    if max_num_considered_actions <= 1:
        return tuple(range(num_simulations))
    log2max = int(math.ceil(math.log2(max_num_considered_actions)))
    sequence: list[int] = []
    visits = [0] * max_num_considered_actions
    num_considered = max_num_considered_actions
    while len(sequence) < num_simulations:
        num_extra_visits = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(num_extra_visits):
            sequence.extend(visits[:num_considered])
            for i in range(num_considered):
                visits[i] += 1
        num_considered = max(2, num_considered // 2)
    return tuple(sequence[:num_simulations])


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _mask_invalid(logits: np.ndarray, invalid_actions: np.ndarray | None) -> np.ndarray:
    """Shift logits to max 0 and give invalid actions the lowest finite float32 (as mctx)."""
    if invalid_actions is None:
        return logits
    logits = logits - logits.max(axis=-1, keepdims=True)
    return np.where(invalid_actions, np.finfo(np.float32).min, logits).astype(np.float32)


class _Tree:
    """Struct-of-arrays storage of B trees with N nodes and A actions each."""

    def __init__(self, batch: int, num_nodes: int, num_actions: int, discount: float,
                 c_visit: float, c_scale: float):
        edges = (batch * num_nodes, num_actions)
        self.num_nodes = num_nodes
        self.discount = np.float32(discount)
        self.c_visit, self.c_scale = np.float32(c_visit), np.float32(c_scale)
        self.child_index = np.full(edges, UNVISITED, np.int32)      # [B·N, A]
        self.child_visits = np.zeros(edges, np.float32)              # [B·N, A]
        self.child_rewards = np.zeros(edges, np.float32)             # [B·N, A]
        self.child_values = np.zeros(edges, np.float32)              # [B·N, A]
        self.prior_logits = np.zeros(edges, np.float32)              # [B·N, A]
        # softmax(prior logits), floored at the smallest normal float as mctx's mixed value does.
        self.prior_probs = np.zeros(edges, np.float32)               # [B·N, A]
        self.raw_values = np.zeros(batch * num_nodes, np.float32)    # [B·N]
        self.node_values = np.zeros(batch * num_nodes, np.float32)   # [B·N]
        self.node_visits = np.zeros(batch * num_nodes, np.float32)   # [B·N]

    def expand(self, flat: np.ndarray, logits: np.ndarray, value: np.ndarray) -> None:
        self.prior_logits[flat] = logits
        self.prior_probs[flat] = np.maximum(_softmax(logits), np.finfo(np.float32).tiny)
        self.raw_values[flat] = value
        self.node_values[flat] = value
        self.node_visits[flat] = 1.0

    def completed_q(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For nodes `flat` [R]: (completed Q [R, A], σ(q̂) [R, A], child visits [R, A])."""
        visits = self.child_visits[flat]
        q = self.child_rewards[flat] + self.discount * self.child_values[flat]
        visited = visits > 0
        probs = self.prior_probs[flat]
        total_visits = visits.sum(axis=-1)
        visited_probs = np.where(visited, probs, 0.0)
        sum_probs = visited_probs.sum(axis=-1)
        weighted_q = (visited_probs * q).sum(axis=-1) / np.where(sum_probs > 0, sum_probs, 1.0)
        mixed = (self.raw_values[flat] + total_visits * weighted_q) / (total_visits + 1.0)
        completed = np.where(visited, q, mixed[:, None])
        low = completed.min(axis=-1, keepdims=True)
        high = completed.max(axis=-1, keepdims=True)
        rescaled = (completed - low) / np.maximum(high - low, RESCALE_EPSILON)
        scale = (self.c_visit + visits.max(axis=-1, keepdims=True)) * self.c_scale
        return completed, scale * rescaled, visits

    def interior_actions(self, flat: np.ndarray) -> np.ndarray:
        """argmax π′ − N / (1 + ΣN) at nodes `flat` [R] (first index on ties, as jnp.argmax)."""
        _, sigma, visits = self.completed_q(flat)
        improved = _softmax(self.prior_logits[flat] + sigma)
        score = improved - visits / (1.0 + visits.sum(axis=-1, keepdims=True))
        return score.argmax(axis=-1).astype(np.int32)


def _considered_scores(gumbel, shifted_logits, sigma, visits, considered_visit, invalid_actions):
    """g + logits + σ(q̂) for actions with the considered visit count, -inf elsewhere."""
    score = np.maximum(LOW_LOGIT, gumbel + shifted_logits + sigma)
    score = np.where(visits == considered_visit, score, -np.inf)
    if invalid_actions is not None:
        score = np.where(invalid_actions, -np.inf, score)
    return score


def gumbel_search(prior_logits: np.ndarray, root_value: np.ndarray, root_state,
                  recurrent_fn: Callable, *, num_simulations: int, max_num_considered_actions: int,
                  gumbel: np.ndarray, discount: float, c_visit: float = 50.0, c_scale: float = 0.1,
                  invalid_actions: np.ndarray | None = None) -> SearchOutput:
    """Run `num_simulations` simulations of B trees in lockstep; a pure function of its inputs.

    prior_logits [B, A], root_value [B], root_state (an array or a tuple of arrays, batch first),
    recurrent_fn(state, actions [B]) -> (next_state, reward [B], value [B], prior_logits [B, A]),
    gumbel [B, A] (zeros for a greedy search), invalid_actions [B, A] bool or None (root only).
    """
    batch, num_actions = prior_logits.shape
    num_nodes = num_simulations + 1
    rows = np.arange(batch)
    root_flat = rows * num_nodes
    tree = _Tree(batch, num_nodes, num_actions, discount, c_visit, c_scale)
    if invalid_actions is not None:
        invalid_actions = np.asarray(invalid_actions, bool)
    logits = _mask_invalid(np.asarray(prior_logits, np.float32), invalid_actions)
    shifted_logits = logits - logits.max(axis=-1, keepdims=True)
    gumbel = np.asarray(gumbel, np.float32)
    tree.expand(root_flat, logits, np.asarray(root_value, np.float32))

    is_tuple = isinstance(root_state, tuple)
    leaves = root_state if is_tuple else (root_state,)
    states = []                                                       # each [B, N, ...]
    for leaf in leaves:
        leaf = np.asarray(leaf)
        stored = np.zeros((batch, num_nodes, *leaf.shape[1:]), leaf.dtype)
        stored[:, 0] = leaf
        states.append(stored)

    num_valid = (np.full(batch, num_actions) if invalid_actions is None
                 else num_actions - invalid_actions.sum(axis=-1))
    num_considered = np.minimum(max_num_considered_actions, num_valid)            # [B]
    table = np.array([considered_visits_sequence(m, num_simulations)
                      for m in range(max_num_considered_actions + 1)], np.float32)
    considered_visits = table[num_considered]                                     # [B, n]

    for simulation in range(num_simulations):
        # Selection: the root by sequential halving, then interior nodes until an unexpanded edge.
        _, sigma, visits = tree.completed_q(root_flat)
        scores = _considered_scores(gumbel, shifted_logits, sigma, visits,
                                    considered_visits[:, simulation:simulation + 1], invalid_actions)
        actions = scores.argmax(axis=-1).astype(np.int32)
        path = []                                           # (rows, flat parent, action) per depth
        active, flat = rows, root_flat
        parent_flat = root_flat.copy()
        leaf_actions = actions.copy()
        while True:
            path.append((active, flat, actions))
            parent_flat[active] = flat
            leaf_actions[active] = actions
            children = tree.child_index[flat, actions]
            going_on = children != UNVISITED
            if not going_on.any():
                break
            active = active[going_on]
            flat = active * num_nodes + children[going_on]
            actions = tree.interior_actions(flat)

        # Expansion: one batched network call for the new node of every tree.
        parents = parent_flat - root_flat
        parent_states = tuple(stored[rows, parents] for stored in states)
        next_state, reward, value, child_logits = recurrent_fn(
            parent_states if is_tuple else parent_states[0], leaf_actions)
        next_leaves = next_state if is_tuple else (next_state,)
        new_node = simulation + 1
        for stored, leaf in zip(states, next_leaves):
            stored[:, new_node] = leaf
        new_flat = root_flat + new_node
        tree.expand(new_flat, np.asarray(child_logits, np.float32), np.asarray(value, np.float32))
        tree.child_index[parent_flat, leaf_actions] = new_node
        tree.child_rewards[parent_flat, leaf_actions] = reward

        # Backup along the recorded path, deepest edge first.
        returns = tree.node_values[new_flat].copy()                                # [B]
        for active, flat, actions in reversed(path):
            child_flat = active * num_nodes + tree.child_index[flat, actions]
            returns[active] = tree.child_rewards[flat, actions] + tree.discount * returns[active]
            count = tree.node_visits[flat]
            tree.node_values[flat] = (tree.node_values[flat] * count + returns[active]) / (count + 1)
            tree.node_visits[flat] = count + 1
            tree.child_values[flat, actions] = tree.node_values[child_flat]
            tree.child_visits[flat, actions] += 1

    completed, sigma, visits = tree.completed_q(root_flat)
    scores = _considered_scores(gumbel, shifted_logits, sigma, visits,
                                visits.max(axis=-1, keepdims=True), invalid_actions)
    action = scores.argmax(axis=-1).astype(np.int32)
    improved_policy = _softmax(_mask_invalid(logits + sigma, invalid_actions))
    return SearchOutput(action, improved_policy.astype(np.float32), visits.astype(np.int32),
                        completed.astype(np.float32), tree.node_values[root_flat].copy())


def search_with_model(model, root, gumbel: np.ndarray, *, num_simulations: int,
                      max_num_considered_actions: int, discount: float, c_visit: float,
                      c_scale: float, invalid_actions: np.ndarray | None = None) -> SearchOutput:
    """`gumbel_search` from a model's root output (fields state, value, policy_logits), expanding
    nodes with `model.recurrent_inference(state, actions)` (fields state, reward, value,
    policy_logits). Used for acting (train.py, evaluate.py) and reanalysis (buffer.py)."""

    def recurrent_fn(state, actions):
        output = model.recurrent_inference(state, actions)
        return output.state, output.reward, output.value, output.policy_logits

    return gumbel_search(root.policy_logits, root.value, root.state, recurrent_fn,
                         num_simulations=num_simulations,
                         max_num_considered_actions=max_num_considered_actions, gumbel=gumbel,
                         discount=discount, c_visit=c_visit, c_scale=c_scale,
                         invalid_actions=invalid_actions)
