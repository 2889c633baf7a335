"""The Gumbel MuZero search of mcts.py written plainly, for one tree at a time (blog topic ①).

Read this first: it is the search of "Policy improvement by planning with Gumbel" (Danihelka et al.,
ICLR 2022) as EfficientZero V2 uses it, with mctx's `gumbel_muzero_policy` semantics, one node
object per state and one simulation at a time. `mcts.gumbel_search` computes the same thing for B
trees in lockstep with flat NumPy arrays, and tests/test_mcts.py checks the two against each other
on random problems (and mcts.py against golden values from mctx).

One simulation:
1. Root: sequential halving. `considered_visits_sequence(m, n)[i]` is the visit count an action must
   have to be considered at simulation i; among those the root takes argmax g + logits + σ(q̂),
   g the Gumbel noise (zeros for a greedy search).
2. Interior nodes: argmax_a π′(a) − N(a) / (1 + Σ_b N(b)), π′ = softmax(logits + σ(q̂)).
3. Expand the leaf edge with one model step: reward, value, prior logits of the new node.
4. Backup: the leaf value is discounted up the path, G ← r + γ·G; each node keeps the running mean
   of its network value and every return through it.

σ(q̂) = (c_visit + max_b N(b)) · c_scale · q̂, where q̂ is the completed Q (r + γ·value(child) for
visited actions, the mixed value for unvisited ones) rescaled to [0, 1]: by the node's own min and
max ("node", mctx), or by the tree's running min and max of every backed-up return ("tree", the
official EZ V2 tree, range floored at `value_delta_max`). The search returns the action, the
improved policy softmax(logits + σ(q̂)), the root's visit counts and completed Q, and the
search-based value estimate (SVE): the root's mean value.
"""

from __future__ import annotations

import numpy as np

from mcts import considered_visits_sequence

TINY = np.finfo(np.float32).tiny


def softmax(logits) -> np.ndarray:
    exponentials = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return exponentials / exponentials.sum()


class Node:
    """One state of the tree: its prior logits, network value and the mean of the returns."""

    def __init__(self, logits, value: float, state):
        self.logits, self.network_value, self.value, self.visits = list(logits), value, value, 1
        self.state = state
        self.children: dict[int, Node] = {}
        self.rewards: dict[int, float] = {}

    def q(self, action: int, discount: float) -> float:
        return self.rewards[action] + discount * self.children[action].value

    def completed_q(self, discount: float) -> tuple[list[float], list[int]]:
        """Q of the visited actions, the mixed value for the others; and the visit counts."""
        actions = range(len(self.logits))
        visits = [self.children[a].visits if a in self.children else 0 for a in actions]
        prior = [max(p, TINY) for p in softmax(self.logits)]
        visited = [a for a in actions if visits[a] > 0]
        weighted_q = 0.0
        if visited:
            weighted_q = (sum(prior[a] * self.q(a, discount) for a in visited)
                          / sum(prior[a] for a in visited))
        mixed = (self.network_value + sum(visits) * weighted_q) / (sum(visits) + 1)
        return [self.q(a, discount) if visits[a] else mixed for a in actions], visits


class Rescale:
    """q̂: completed Q rescaled to [0, 1], per node ("node") or by the tree's running range
    ("tree", folding in each simulation's backed-up returns and the root's γ·G)."""

    def __init__(self, q_normalization: str, value_delta_max: float):
        self.per_tree = q_normalization == "tree"
        self.value_delta_max = value_delta_max
        self.low, self.high = np.inf, -np.inf

    def record(self, returns: list[float], discount: float) -> None:
        """Returns r + γ·G of the path's edges, root first."""
        for value in returns + [discount * returns[0]]:
            self.low, self.high = min(self.low, value), max(self.high, value)

    def __call__(self, completed: list[float]) -> list[float]:
        if not self.per_tree:
            low, high = min(completed), max(completed)
            return [(q - low) / max(high - low, 1e-8) for q in completed]
        spread = self.high - self.low
        if spread <= 0:
            return [min(max(q, 0.0), 1.0) for q in completed]
        return [min(max((q - self.low) / max(spread, self.value_delta_max), 0.0), 1.0)
                for q in completed]


def sigma(node: Node, rescale: Rescale, discount: float, c_visit: float, c_scale: float):
    """σ(q̂) of a node's actions, with its completed Q and visit counts."""
    completed, visits = node.completed_q(discount)
    scale = (c_visit + max(visits)) * c_scale
    return [scale * q for q in rescale(completed)], completed, visits


def reference_search(logits, value: float, state, step, *, num_simulations: int,
                     max_num_considered_actions: int, gumbel, discount: float,
                     c_visit: float = 50.0, c_scale: float = 0.1, invalid=None,
                     q_normalization: str = "node", value_delta_max: float = 0.01):
    """One tree. step(state, action) -> (next_state, reward, value, logits).

    Returns (action, improved policy [A], root visit counts [A], root completed Q [A], SVE)."""
    num_actions = len(logits)
    logits = np.asarray(logits, np.float64)
    if invalid is not None:                       # invalid root actions: never considered
        logits = np.where(invalid, np.finfo(np.float32).min, logits - logits.max())
    root = Node(logits, value, state)
    rescale = Rescale(q_normalization, value_delta_max)
    num_valid = num_actions if invalid is None else num_actions - int(np.sum(invalid))
    considered_visits = considered_visits_sequence(min(max_num_considered_actions, num_valid),
                                                   num_simulations)
    shifted = logits - logits.max()

    def root_scores(considered: int) -> list[float]:
        root_sigma, _, visits = sigma(root, rescale, discount, c_visit, c_scale)
        return [max(-1e9, gumbel[a] + shifted[a] + root_sigma[a])
                if visits[a] == considered and not (invalid is not None and invalid[a])
                else -np.inf for a in range(num_actions)]

    for simulation in range(num_simulations):
        node, path = root, []
        action = int(np.argmax(root_scores(considered_visits[simulation])))
        while True:                                                        # select
            path.append((node, action))
            if action not in node.children:
                break
            node = node.children[action]
            node_sigma, _, visits = sigma(node, rescale, discount, c_visit, c_scale)
            improved = softmax(np.asarray(node.logits) + node_sigma)
            action = int(np.argmax([improved[a] - visits[a] / (1 + sum(visits))
                                    for a in range(num_actions)]))
        parent, action = path[-1]                                          # expand
        next_state, reward, leaf_value, leaf_logits = step(parent.state, action)
        parent.children[action] = Node(leaf_logits, leaf_value, next_state)
        parent.rewards[action] = reward
        returns, backed_up = leaf_value, []                                # backup
        for node, action in reversed(path):
            returns = node.rewards[action] + discount * returns
            backed_up.insert(0, returns)
            node.value = (node.value * node.visits + returns) / (node.visits + 1)
            node.visits += 1
        if rescale.per_tree:
            rescale.record(backed_up, discount)
    root_sigma, completed, visits = sigma(root, rescale, discount, c_visit, c_scale)
    action = int(np.argmax(root_scores(max(visits))))
    improved = np.asarray(logits) + root_sigma
    if invalid is not None:
        improved = np.where(invalid, np.finfo(np.float32).min, improved - improved.max())
    return action, softmax(improved), np.asarray(visits), np.asarray(completed), root.value
