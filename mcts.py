"""Batched Gumbel MuZero tree search with sequential halving, in NumPy alone (blog topic ①).

Implements the search of "Policy improvement by planning with Gumbel" (Danihelka et al., ICLR 2022,
Appendix D) with the semantics of DeepMind's mctx `gumbel_muzero_policy` and
`qtransform_completed_by_mix_value`; `mcts_reference.py` is the same search for one tree, written
plainly (read it first; the tests hold the two equal). B trees advance in lockstep, so each
simulation makes one batched `recurrent_fn` call for all of them: 4 trees when acting,
B·(K+1) = 1,536 in reanalysis.

Shapes: B trees, A actions, N = num_simulations + 1 nodes per tree (node 0 is the root; simulation i
creates node i + 1). Node j of tree b has the flat index k = b·N + j; per-node arrays are [T] with
T = B·N + 1, per-edge arrays are action-major [A, T] (flat index of the edge of action a at node k:
a·T + k). The extra node k = T - 1 is a scratch slot that absorbs the writes of trees whose path is
shorter than the batch's longest. Search states stay as the model returned them, one [B, ...]
array per state leaf per simulation (a state pool, as the official code's), gathered per tree.

- Root (sequential halving): m = min(max_num_considered_actions, valid actions); the table of
  `considered_visits_sequence(m, n)` says, at simulation i, which visit count an action must have to
  be considered; among those, the root takes argmax g + logits + σ(q̂), g the Gumbel noise.
- Interior nodes: argmax_a π′(a) − N(a) / (1 + Σ_b N(b)), with π′ = softmax(logits + σ(q̂)).
- σ(q̂) = (c_visit + max_b N(b)) · c_scale · q̂, q̂ the node's completed Q rescaled to [0, 1] by its
  own min and max; unvisited actions are completed with the mixed value
  (v̂ + Σ_b N(b) · Σ_visited π(a) q(a) / Σ_visited π(a)) / (1 + Σ_b N(b)).
- Backup: the leaf value is discounted up the path, r + γ·G, and every node on it keeps the running
  mean of its network value and the returns through it; q(a) = r(a) + γ·value(child).
- Output: the action argmax g + logits + σ(q̂) among the most-visited actions, the improved policy
  softmax(logits + σ(q̂)), root visit counts, the root's completed Q (before rescaling, i.e. in value
  units: r + γ·v for visited actions, the mixed value for the others) and the search-based value
  estimate (SVE): the root's mean of its network value and every backed-up return.

Speed: a node's σ(q̂), and so its interior choice, changes only when a backup passes through it, or,
with the tree-wide Q range, when a backup moves that range. The backup therefore recomputes σ for
all nodes of all B paths (and every node of a tree whose range moved) in one batched pass and caches
each interior node's next edge and the root's scores; the selection walk is then a few gathers per
depth.

Differences from EfficientZero V2's official tree (`ez/mcts/ctree/cnode.cpp`, `cminimax.cpp`,
`ez/mcts/cy_mcts.py`); the search follows mctx, checked against golden values from mctx 0.0.71 in
tests/test_mcts.py, except for the first, which the training presets take from the official tree:
- Q normalisation (`q_normalization`): "tree", the official rule and every preset's default, keeps
  one running min/max per tree (`CMinMaxStats`); each simulation folds in its own backed-up returns
  r + γ·G along the path and the root's entry γ·G (the root has no reward); q̂ = (Q − min) /
  max(max − min, `value_delta_max`), Q itself when the range is not positive, then clipped to
  [0, 1]. "node" (this function's default, mctx's rule) rescales per node over the node's completed
  Q. (The official mixed value for unvisited actions also differs, using the node's mean value and
  1/(2 + ΣN); this search keeps mctx's mixed value with either rule.)
- Root: the candidates are fixed at the first simulation as the top m of g + prior logits; each
  phase visits the least-visited candidate, then keeps the top m_phase = m // 2^phase (down to 1,
  not "at least 2") by g + logits + σ(q̂); a phase lasts max(1,
  floor(n / (log2 m · m_phase))) · m_phase simulations (log2 without ceil) while m_phase > 2, and
  the last phase takes all remaining ones.
- Interior rule: the denominator is 1 + the node's own visit count instead of 1 + Σ_b N(b).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Callable, NamedTuple

import numpy as np

UNVISITED = -1
LOW_LOGIT = np.float32(-1e9)      # mctx's floor for root scores, so masked logits never give -inf
RESCALE_EPSILON = np.float32(1e-8)  # guards min-max rescaling when all completed Q values are equal
# mctx floors prior probabilities at the smallest normal float32, so a visited action's weight in
# the mixed value is never 0; the same constant guards its division when no action is visited yet.
TINY = np.float32(np.finfo(np.float32).tiny)


class SearchOutput(NamedTuple):
    action: np.ndarray            # [B] int
    improved_policy: np.ndarray   # [B, A] float32 softmax(logits + σ(q̂)); invalid actions get 0
    visit_counts: np.ndarray      # [B, A] int root visit counts
    completed_q: np.ndarray       # [B, A] float32 root Q, unvisited actions completed
                                  # by the mixed value
    root_value: np.ndarray        # [B] float32 search-based value estimate (SVE)


def sample_gumbel(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """Gumbel(0, 1) noise times `scale`, float32."""
    return (scale * rng.gumbel(size=shape)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def considered_visits_sequence(max_num_considered_actions: int, num_simulations: int) -> tuple:
    """Sequential halving: the visit count an action must have to be considered at each simulation.

    Each phase gives every remaining action max(1, floor(n / (ceil(log2 m) · remaining))) visits,
    then keeps the better half (at least 2). E.g. m=8, n=24: 0×8, 1×4, 2×4, 3,3,4,4,5,5,6,6.
    Same as mctx's `get_sequence_of_considered_visits`.
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


@functools.lru_cache(maxsize=None)
def _considered_visits_table(max_num_considered_actions: int, num_simulations: int) -> np.ndarray:
    """[m_max + 1, n] float32, read-only: row m is `considered_visits_sequence(m, n)`; row 0 serves
    rows whose actions are all invalid (as mctx's table)."""
    table = np.array([considered_visits_sequence(m, num_simulations)
                      for m in range(max_num_considered_actions + 1)], np.float32).reshape(
                          max_num_considered_actions + 1, num_simulations)
    table.flags.writeable = False
    return table


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    """Softmax computed as jax.nn.softmax (max-shifted)."""
    exp = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def _mask_invalid(logits: np.ndarray, invalid_actions: np.ndarray | None) -> np.ndarray:
    """[B, A]: shift logits to max 0 and give invalid actions the lowest finite float32 (as mctx): a
    finite floor keeps the softmax free of NaN even when every action is invalid."""
    if invalid_actions is None:
        return logits
    logits = logits - logits.max(axis=-1, keepdims=True)
    return np.where(invalid_actions, np.finfo(np.float32).min, logits).astype(np.float32)


# Above this many columns, argmax over the short action axis is done with whole-row operations:
# NumPy's axis-0 argmax of an [A, R] array costs ~15 ns per element, the row-wise form ~3 ns.
ROWWISE_ARGMAX_MIN_COLUMNS = 256


def _argmax_actions(scores: np.ndarray) -> np.ndarray:
    """[A, R] -> [R]: first index of the maximum over actions (ties as np.argmax / jnp.argmax)."""
    if scores.shape[1] < ROWWISE_ARGMAX_MIN_COLUMNS:
        return scores.argmax(axis=0)
    num_actions = scores.shape[0]
    descending_rank = np.arange(num_actions, 0, -1)[:, None]             # [A, 1]: A, ..., 1
    return num_actions - ((scores == scores.max(axis=0)) * descending_rank).max(axis=0)


def as_leaves(state) -> tuple:
    """A state (an array or a tuple of arrays, batch first) as a tuple of NumPy arrays."""
    return tuple(np.asarray(leaf) for leaf in (state if isinstance(state, tuple) else (state,)))


def gather_states(state_pool: list, nodes: np.ndarray) -> tuple:
    """The state of node nodes[b] of tree b for every b; state_pool[j] holds node j of all trees."""
    first = nodes[0]
    if np.all(nodes == first):                       # e.g. the first simulation: every root
        return state_pool[first]
    gathered = tuple(np.empty_like(leaf) for leaf in state_pool[0])
    for node in np.unique(nodes):
        lanes = np.flatnonzero(nodes == node)
        for out, leaf in zip(gathered, state_pool[node]):
            out[lanes] = leaf[lanes]
    return gathered


class _Trees:
    """Struct-of-arrays storage of B trees with N nodes and A actions each, plus one scratch node.

    Per-edge arrays are action-major, [A, B·N + 1], so the reductions over a node's actions are
    operations between A long rows instead of many length-A reductions."""

    def __init__(self, batch: int, num_nodes: int, num_actions: int, *, discount: float,
                 c_visit: float, c_scale: float, q_normalization: str, value_delta_max: float):
        self.batch, self.num_actions, self.num_nodes = batch, num_actions, num_nodes
        self.scratch = batch * num_nodes                        # flat index of the scratch node
        self.stride = batch * num_nodes + 1                     # T: edge (k, a) has flat index
                                                                # a·T + k
        nodes, edges = self.stride, (num_actions, self.stride)
        self.discount = np.float32(discount)
        self.c_visit, self.c_scale = np.float32(c_visit), np.float32(c_scale)
        self.tree_wide = q_normalization == "tree"
        self.value_delta_max = np.float32(value_delta_max)
        # Per tree: the running min / max of every backed-up Q, used when q_normalization == "tree"
        # (the official EZ V2 tree's CMinMaxStats).
        self.q_low = np.full(batch, np.inf, np.float32)
        self.q_high = np.full(batch, -np.inf, np.float32)
        self.raw_value = np.zeros(nodes, np.float32)            # [T] network value v̂
        self.value = np.zeros(nodes, np.float32)                # [T] mctx's node_values
        self.visits = np.zeros(nodes, np.float32)               # [T] 1 + backups through the node
        self.next_edge = np.zeros(nodes, np.intp)               # [T] cached interior choice a·T + k
        self.next_edge[self.scratch] = self.scratch             # the scratch node leads to itself
        self.child = np.full(edges, UNVISITED, np.intp)         # [A, T] flat child index
        self.edge_visits = np.zeros(edges, np.float32)          # [A, T] N(a)
        self.edge_reward = np.zeros(edges, np.float32)          # [A, T] r(a)
        self.edge_q = np.zeros(edges, np.float32)               # [A, T] r(a) + γ·value(child)
        self.logits = np.zeros(edges, np.float32)               # [A, T] prior logits
        self.probs = np.zeros(edges, np.float32)                # [A, T] softmax(logits) ≥ TINY
        self.root = np.arange(batch) * num_nodes                # [B] flat root nodes
        self.lanes = np.arange(batch)
        # Views: per node [B, N], per edge [A, B, N], the root's edge visits [A, B], flat edges.
        self.node_value = self.per_node(self.value)
        self.node_raw_value = self.per_node(self.raw_value)
        self.node_visits = self.per_node(self.visits)
        self.node_next_edge = self.per_node(self.next_edge)
        self.node_logits, self.node_probs = self.per_edge(self.logits), self.per_edge(self.probs)
        self.root_visits = self.per_edge(self.edge_visits)[:, :, 0]
        self.child_flat, self.edge_reward_flat = self.child.ravel(), self.edge_reward.ravel()
        self.edge_q_flat, self.edge_visits_flat = self.edge_q.ravel(), self.edge_visits.ravel()

    def store_node(self, new: int, logits: np.ndarray, value: np.ndarray) -> None:
        """Store node `new` of every tree from logits [B, A] and value [B]."""
        self.node_raw_value[:, new] = self.node_value[:, new] = value
        self.node_visits[:, new] = 1
        logits = np.ascontiguousarray(logits.T)                              # [A, B]
        self.node_logits[:, :, new] = logits
        probs = softmax(logits, axis=0)
        np.maximum(probs, TINY, out=self.node_probs[:, :, new])
        # A fresh node has σ = 0 (all completed Q equal): its first choice is the prior's argmax.
        self.node_next_edge[:, new] = _argmax_actions(probs) * self.stride + self.root + new

    def select(self, root_scores: np.ndarray):
        """The root's edge by `root_scores` [A, B] (-inf where not considered), then cached
        interior choices until an edge without a child. A tree whose edge has no child steps to
        index -1, the scratch node, and stays there: the scratch node's next edge is its own (child
        UNVISITED), so no per-depth masking is needed. Returns the path's nodes and edges [D, B],
        on_path [D, B] and the new edge [B]."""
        edge = _argmax_actions(root_scores) * self.stride + self.root
        path_nodes, path_edges = [self.root], [edge]                       # per depth, [B] each
        while True:
            child = self.child_flat.take(edge)
            if child.max() < 0:
                break
            edge = self.next_edge.take(child)
            path_nodes.append(child)
            path_edges.append(edge)
        nodes, edges = np.array(path_nodes), np.array(path_edges)          # [D, B]
        on_path = nodes >= 0                                               # [D, B]
        depth = on_path.sum(axis=0) - 1                                    # [B] of leaf parent
        return nodes, edges, on_path, edges.ravel().take(depth * self.batch + self.lanes)

    def backup(self, nodes: np.ndarray, edges: np.ndarray, on_path: np.ndarray,
               value: np.ndarray) -> np.ndarray | None:
        """Back the leaf value [B] up every path at once, as [D, B] arrays; past its leaf a path
        holds the scratch node (-1) and edge, which absorb the writes. With the tree-wide Q range,
        returns [B] whether each tree's range changed."""
        rewards = self.edge_reward_flat.take(edges)
        # The scratch edge's reward is 0, so with discount 1 off the path the leaf value passes down
        # unchanged to the leaf's row; on the path, mctx's
        # leaf_value = reward + discount * leaf_value.
        discounts = np.where(on_path, self.discount, np.float32(1))
        returns = np.empty((len(nodes) + 1, self.batch), np.float32)           # [D + 1, B]
        returns[-1] = value
        for d in range(len(nodes) - 1, -1, -1):
            np.add(rewards[d], discounts[d] * returns[d + 1], out=returns[d])
        returns = returns[:-1]
        counts = self.visits.take(nodes)
        new_values = (self.value.take(nodes) * counts + returns) / (counts + 1)
        self.value[nodes] = new_values
        self.visits[nodes] = counts + 1
        child_values = np.empty_like(new_values)            # value of each edge's child
        child_values[:-1] = np.where(on_path[1:], new_values[1:], value)
        child_values[-1] = value
        self.edge_q_flat[edges] = rewards + self.discount * child_values
        self.edge_visits_flat[edges] = self.edge_visits_flat.take(edges) + 1
        return self.record_returns(returns, on_path) if self.tree_wide else None

    def refresh_moved_ranges(self, range_changed: np.ndarray | None, simulation: int) -> None:
        """A new tree-wide min or max changes σ(q̂) at every node of that tree, also off the path
        (the official tree scores children afresh at every selection, with the current range):
        refresh the cached choices of its nodes that have a child. A node without one has equal
        completed Q for all actions, so its choice is the prior's whatever q̂."""
        if range_changed is None or not range_changed.any():
            return
        nodes = (self.root[range_changed, None] + np.arange(1, simulation + 2)).ravel()
        self.refresh(nodes[self.visits.take(nodes) > 1])

    def per_node(self, array: np.ndarray) -> np.ndarray:
        """A per-node array viewed as [B, N] (scratch node left out)."""
        return array[:self.scratch].reshape(self.batch, -1)

    def per_edge(self, array: np.ndarray) -> np.ndarray:
        """A per-edge array viewed as [A, B, N] (scratch node left out)."""
        return array[:, :self.scratch].reshape(self.num_actions, self.batch, -1)

    def record_returns(self, returns: np.ndarray, on_path: np.ndarray) -> np.ndarray:
        """Fold one simulation's backed-up returns into the per-tree min/max, as the official tree's
        back-propagation: returns [D, B] (row d: r + γ·G of the edge leaving path node d) and the
        root's own entry γ·returns[0] (the root has no reward). Returns [B] whether a tree's range
        changed."""
        root_entry = self.discount * returns[0]
        low = np.minimum(np.where(on_path, returns, np.inf).min(axis=0), root_entry)
        high = np.maximum(np.where(on_path, returns, -np.inf).max(axis=0), root_entry)
        changed = (low < self.q_low) | (high > self.q_high)
        np.minimum(self.q_low, low, out=self.q_low)
        np.maximum(self.q_high, high, out=self.q_high)
        return changed

    def rescale(self, completed: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Completed Q [A, R] of nodes [R] -> q̂ in [0, 1].

        "node" (mctx): by the node's own min and max. "tree" (official EZ V2, `CMinMaxStats`): by
        the tree's running min and max, divided by the range floored at value_delta_max; a range of
        zero or less (one distinct return, or none yet) leaves Q unscaled; then clipped to
        [0, 1]."""
        if not self.tree_wide:
            low = completed.min(axis=0)
            return (completed - low) / np.maximum(completed.max(axis=0) - low, RESCALE_EPSILON)
        tree = nodes // self.num_nodes
        low, high = self.q_low[tree], self.q_high[tree]
        spread = high - low
        scaled = (completed - low) / np.maximum(spread, self.value_delta_max)
        return np.clip(np.where(spread > 0, scaled, completed), 0.0, 1.0)

    def refresh(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Recompute σ(q̂) at nodes [R] after a backup and cache their interior choice
        next_edge = argmax π′ − N / (1 + ΣN) (first index on ties, as jnp.argmax).

        Returns σ(q̂) [A, R] and the completed Q [A, R] (value units)."""
        visits = self.edge_visits.take(nodes, axis=1)
        q = self.edge_q.take(nodes, axis=1)
        visited = visits > 0
        visited_probs = self.probs.take(nodes, axis=1) * visited
        total_visits = visits.sum(axis=0)
        # With no visit yet both sums are 0 and the mixed value is v̂ whatever weighted_q is.
        sum_probs = np.maximum(visited_probs.sum(axis=0), TINY)
        weighted_q = (visited_probs * q / sum_probs).sum(axis=0)
        mixed = (self.raw_value.take(nodes) + total_visits * weighted_q) / (total_visits + 1)
        completed = np.where(visited, q, mixed)
        rescaled = self.rescale(completed, nodes)
        sigma = (self.c_visit + visits.max(axis=0)) * self.c_scale * rescaled
        improved = softmax(self.logits.take(nodes, axis=1) + sigma, axis=0)
        score = improved - visits / (1 + total_visits)
        self.next_edge[nodes] = _argmax_actions(score) * self.stride + nodes
        return sigma, completed


def _check_recurrent_output(reward, value, logits, batch: int, num_actions: int) -> None:
    """recurrent_fn must return reward [B], value [B] and prior logits [B, A]."""
    shapes = (np.shape(reward), np.shape(value), np.shape(logits))
    if shapes != ((batch,), (batch,), (batch, num_actions)):
        raise ValueError(f"recurrent_fn returned reward, value, logits of shapes {shapes}; "
                         f"expected ({batch},), ({batch},), ({batch}, {num_actions})")


def gumbel_search(prior_logits: np.ndarray, root_value: np.ndarray, root_state,
                  recurrent_fn: Callable, *, num_simulations: int, max_num_considered_actions: int,
                  gumbel: np.ndarray, discount: float, c_visit: float = 50.0, c_scale: float = 0.1,
                  invalid_actions: np.ndarray | None = None, q_normalization: str = "node",
                  value_delta_max: float = 0.01) -> SearchOutput:
    """Run `num_simulations` simulations of B trees in lockstep; a pure function of its inputs.

    prior_logits [B, A], root_value [B], root_state (an array or a tuple of arrays, batch first),
    recurrent_fn(state, actions [B]) -> (next_state, reward [B], value [B], prior_logits [B, A]),
    gumbel [B, A] (zeros for a greedy search), invalid_actions [B, A] bool or None (root only).
    q_normalization: "node" (mctx, the default) or "tree" (the official EZ V2 tree's running min/max
    per tree, range floored at value_delta_max). Internally root quantities are action-major,
    [A, B].
    """
    if q_normalization not in ("node", "tree"):
        raise ValueError(f"q_normalization must be 'node' or 'tree', got {q_normalization!r}")
    prior_logits = np.asarray(prior_logits, np.float32)
    batch, num_actions = prior_logits.shape
    trees = _Trees(batch, num_simulations + 1, num_actions, discount=discount, c_visit=c_visit,
                   c_scale=c_scale, q_normalization=q_normalization,
                   value_delta_max=value_delta_max)
    # Root: invalid actions masked as mctx does; scores use logits shifted to max 0 (mctx's
    # score_considered).
    if invalid_actions is not None:
        invalid_actions = np.asarray(invalid_actions, bool)
    logits = _mask_invalid(prior_logits, invalid_actions)                      # [B, A]
    trees.store_node(0, logits, np.asarray(root_value, np.float32))
    root = _Root(gumbel, logits, invalid_actions, max_num_considered_actions, num_simulations)
    # Before any visit σ(q̂) = 0 and every completed Q is the root's value.
    root_sigma = np.zeros((num_actions, batch), np.float32)
    root_completed = np.broadcast_to(trees.node_value[:, 0], (num_actions, batch))
    scores = root.scores(root_sigma)
    states = _StatePool(root_state, recurrent_fn, trees)
    for simulation in range(num_simulations):
        nodes, edges, on_path, leaf_edge = trees.select(
            root.considered(scores, trees.root_visits, simulation))
        value = states.expand(simulation + 1, leaf_edge)
        range_changed = trees.backup(nodes, edges, on_path, value)
        # Refresh σ on every path node (roots are the first B, their cached next edge unused).
        sigma, completed = trees.refresh(nodes[on_path])
        trees.refresh_moved_ranges(range_changed, simulation)
        root_sigma, root_completed = sigma[:, :batch], completed[:, :batch]
        scores = root.scores(root_sigma)

    # Final choice: mctx's score_considered with the most-visited actions as the considered ones.
    root_visits = trees.root_visits
    considered = np.where(root_visits == root_visits.max(axis=0), scores, -np.inf)
    improved_policy = softmax(_mask_invalid(logits + root_sigma.T, invalid_actions), axis=1)
    return SearchOutput(_argmax_actions(considered), improved_policy.astype(np.float32),
                        root_visits.T.astype(np.int32), root_completed.T.astype(np.float32),
                        trees.value.take(trees.root))


class _Root:
    """What the root's choice needs besides σ(q̂): g + logits, the invalid actions' penalty and the
    sequential-halving table of the visit count a considered action has at each simulation."""

    def __init__(self, gumbel: np.ndarray, logits: np.ndarray, invalid_actions: np.ndarray | None,
                 max_num_considered_actions: int, num_simulations: int):
        batch, num_actions = logits.shape
        self.gumbel_plus_logits = (np.asarray(gumbel, np.float32)
                                   + (logits - logits.max(axis=1, keepdims=True))).T    # [A, B]
        self.invalid_penalty = (
            np.zeros((num_actions, batch), np.float32) if invalid_actions is None
            else np.where(invalid_actions.T, -np.inf, 0).astype(np.float32))
        num_valid = (np.full(batch, num_actions) if invalid_actions is None
                     else num_actions - invalid_actions.sum(axis=1))
        num_considered = np.minimum(max_num_considered_actions, num_valid)             # [B]
        self.considered_visits = _considered_visits_table(
            max_num_considered_actions, num_simulations)[num_considered].T.copy()      # [n, B]

    def scores(self, root_sigma: np.ndarray) -> np.ndarray:
        """g + logits + σ(q̂) floored at LOW_LOGIT, -inf for invalid actions: [A, B]."""
        return np.maximum(self.gumbel_plus_logits + root_sigma, LOW_LOGIT) + self.invalid_penalty

    def considered(self, scores: np.ndarray, root_visits: np.ndarray,
                   simulation: int) -> np.ndarray:
        """Sequential halving: the scores of the actions with the visit count that simulation
        `simulation` considers, -inf elsewhere."""
        return np.where(root_visits == self.considered_visits[simulation], scores, -np.inf)


class _StatePool:
    """Node states as the official code's state pool: pool[j] holds node j of every tree, the arrays
    as the model returned them (never copied in); a parent's state is gathered per tree."""

    def __init__(self, root_state, recurrent_fn: Callable, trees: _Trees):
        self.is_tuple = isinstance(root_state, tuple)
        self.pool = [as_leaves(root_state)]
        self.recurrent_fn, self.trees = recurrent_fn, trees

    def expand(self, new: int, leaf_edge: np.ndarray) -> np.ndarray:
        """One batched network call for node `new` of every tree, the child of `leaf_edge` [B];
        returns its value [B]."""
        trees = self.trees
        leaf_action, leaf_parent = np.divmod(leaf_edge, trees.stride)
        parent_states = gather_states(self.pool, leaf_parent - trees.root)
        next_state, reward, value, child_logits = self.recurrent_fn(
            parent_states if self.is_tuple else parent_states[0], leaf_action)
        _check_recurrent_output(reward, value, child_logits, trees.batch, trees.num_actions)
        self.pool.append(as_leaves(next_state))
        value = np.asarray(value, np.float32)
        trees.store_node(new, np.asarray(child_logits, np.float32), value)
        trees.child_flat[leaf_edge] = trees.root + new
        trees.edge_reward_flat[leaf_edge] = reward
        return value


def search_with_model(model, root, gumbel: np.ndarray, *, num_simulations: int,
                      max_num_considered_actions: int, discount: float, c_visit: float,
                      c_scale: float, invalid_actions: np.ndarray | None = None,
                      q_normalization: str = "node", value_delta_max: float = 0.01
                      ) -> SearchOutput:
    """`gumbel_search` from a model's root output (fields state, value, policy_logits), expanding
    nodes with `model.recurrent_inference(state, actions)` (fields state, reward, value,
    policy_logits). Used for acting (`search_actions`) and reanalysis (targets.py)."""

    def recurrent_fn(state, actions):
        output = model.recurrent_inference(state, actions)
        return output.state, output.reward, output.value, output.policy_logits

    return gumbel_search(root.policy_logits, root.value, root.state, recurrent_fn,
                         num_simulations=num_simulations,
                         max_num_considered_actions=max_num_considered_actions, gumbel=gumbel,
                         discount=discount, c_visit=c_visit, c_scale=c_scale,
                         invalid_actions=invalid_actions, q_normalization=q_normalization,
                         value_delta_max=value_delta_max)


def search_actions(model, observations: np.ndarray, search_options: dict,
                   rng: np.random.Generator | None, gumbel_scale: float) -> SearchOutput:
    """The acting search: one batched Gumbel search from the model's root outputs for observations
    [B, ...] (self-play in train.py, greedy evaluation in evaluate.py). `search_options` are the
    keyword arguments of `search_with_model` (config.search_options()). With `rng=None` or
    `gumbel_scale=0` the Gumbel noise is zero: the greedy evaluation search."""
    root = model.initial_inference(observations)
    batch, num_actions = root.policy_logits.shape
    if rng is None or gumbel_scale == 0.0:
        gumbel = np.zeros((batch, num_actions), np.float32)
    else:
        gumbel = sample_gumbel(rng, (batch, num_actions), gumbel_scale)
    return search_with_model(model, root, gumbel, **search_options)


class TimedModel:
    """A model whose inference calls add their seconds to `seconds`: reanalysis and the benchmarks
    split search time into network and tree time with it."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        self.action_dims = getattr(model, "action_dims", 0)     # 0: discrete actions

    def _timed(self, call, *args):
        start = time.perf_counter()
        output = call(*args)
        self.seconds += time.perf_counter() - start
        return output

    def initial_inference(self, observations):
        return self._timed(self.model.initial_inference, observations)

    def initial_inference_sequence(self, frames):
        return self._timed(self.model.initial_inference_sequence, frames)

    def recurrent_inference(self, state, actions):
        return self._timed(self.model.recurrent_inference, state, actions)
