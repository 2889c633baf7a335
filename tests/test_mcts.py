"""Gumbel MuZero search (mcts.py) against hand-computed cases and a slow one-tree reference."""

import math
import os

import numpy as np
import pytest

import mcts
from mcts import considered_visits_sequence, gumbel_search
from mcts_reference import reference_search, softmax


class HashModel:
    """A deterministic random model: outputs are a hash of the (state, action) path."""

    def __init__(self, num_actions, seed):
        self.A, self.seed = num_actions, seed

    def _outputs(self, key):
        rng = np.random.default_rng(abs(hash((self.seed, key))) % (2 ** 32))
        return (float(rng.normal()), float(rng.normal()),
                rng.normal(size=self.A).astype(np.float32) * 2)

    def step_one(self, state, action):
        key = state + (int(action),)
        reward, value, logits = self._outputs(key)
        return key, np.float32(reward), np.float32(value), logits

    def batched(self, state, actions):
        """Batched recurrent_fn; the state is an int array [B, 64] encoding the path."""
        paths, lengths = state
        out = [self.step_one(tuple(p[:length]), a) for p, length, a in zip(paths, lengths, actions)]
        new_paths = paths.copy()
        new_paths[np.arange(len(actions)), lengths] = actions
        return ((new_paths, lengths + 1), np.array([o[1] for o in out]),
                np.array([o[2] for o in out]), np.stack([o[3] for o in out]))


def run_batched(model, roots, n, m, gumbel, discount, invalid=None):
    B = len(roots)
    logits = np.stack([r[2] for r in roots])
    values = np.array([r[1] for r in roots], np.float32)
    state = (np.zeros((B, 64), np.int64), np.zeros(B, np.int64))
    return gumbel_search(logits, values, state, model.batched, num_simulations=n,
                         max_num_considered_actions=m, gumbel=gumbel, discount=discount,
                         invalid_actions=invalid)


# --- golden values from DeepMind mctx 0.0.71 -----------------------------------------------------
# A table model both sides can run: the state is an int id, child = (state · (A + 1) + a + 1) mod M,
# and reward, value and logits are rows of random tables. `python tests/test_mcts.py` (in a venv
# with jax, mctx and pytest; not needed for the tests) regenerates tests/data/mcts_golden.npz.

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "data", "mcts_golden.npz")
GOLDEN_CASES = [  # A, n, m, discount, B, with invalid actions
    (4, 16, 4, 0.997, 8, False), (4, 16, 4, 0.997, 8, True), (2, 1, 2, 0.9, 3, False),
    (3, 5, 4, 0.5, 4, True), (6, 50, 16, 0.99, 4, True), (5, 24, 4, 0.0, 4, False),
    (4, 16, 1, 0.997, 4, False), (3, 50, 2, 1.0, 4, True), (1, 8, 4, 0.9, 2, False),
    (4, 16, 4, 0.997, 300, True),
]
TABLE_SIZE = 97


def golden_problem(case_index):
    A, n, m, discount, B, with_invalid = GOLDEN_CASES[case_index]
    rng = np.random.default_rng(100 + case_index)
    problem = dict(reward=rng.normal(size=TABLE_SIZE).astype(np.float32),
                   value=rng.normal(size=TABLE_SIZE).astype(np.float32),
                   logits=(2 * rng.normal(size=(TABLE_SIZE, A))).astype(np.float32),
                   root_state=rng.integers(0, TABLE_SIZE, size=B).astype(np.int32),
                   root_logits=(2 * rng.normal(size=(B, A))).astype(np.float32),
                   root_value=rng.normal(size=B).astype(np.float32),
                   gumbel=rng.gumbel(size=(B, A)).astype(np.float32))
    invalid = rng.random((B, A)) < 0.4
    invalid[np.arange(B), rng.integers(0, A, size=B)] = False  # at least one valid action per row
    problem["invalid"] = invalid if with_invalid else None
    return problem


def table_step(problem, state, actions):
    child = (state * (problem["logits"].shape[1] + 1) + actions + 1) % TABLE_SIZE
    return child, problem["reward"][child], problem["value"][child], problem["logits"][child]


def _generate_golden_fixtures():
    import jax
    import jax.numpy as jnp
    import mctx

    arrays = {}
    for i, (_A, n, m, discount, _B, _with_invalid) in enumerate(GOLDEN_CASES):
        problem = golden_problem(i)
        tables = {k: jnp.asarray(problem[k]) for k in ("reward", "value", "logits")}

        def recurrent_fn(params, rng_key, action, state, tables=tables, discount=discount):
            child, reward, value, logits = table_step(tables, state, action)
            return mctx.RecurrentFnOutput(reward=reward, discount=jnp.full_like(reward, discount),
                                          prior_logits=logits, value=value), child

        # gumbel_muzero_policy draws its noise from the key; feed ours through a stub of the draw.
        gumbel = jnp.asarray(problem["gumbel"])
        original = jax.random.gumbel
        jax.random.gumbel = lambda key, shape, dtype, gumbel=gumbel: gumbel
        try:
            out = mctx.gumbel_muzero_policy(
                params=(), rng_key=jax.random.PRNGKey(0),
                root=mctx.RootFnOutput(prior_logits=jnp.asarray(problem["root_logits"]),
                                       value=jnp.asarray(problem["root_value"]),
                                       embedding=jnp.asarray(problem["root_state"])),
                recurrent_fn=recurrent_fn, num_simulations=n, max_num_considered_actions=m,
                invalid_actions=(None if problem["invalid"] is None
                                 else jnp.asarray(problem["invalid"])),
                qtransform=mctx.qtransform_completed_by_mix_value)
        finally:
            jax.random.gumbel = original
        summary = out.search_tree.summary()
        arrays.update({f"{i}/action": np.asarray(out.action),
                       f"{i}/improved_policy": np.asarray(out.action_weights),
                       f"{i}/visit_counts": np.asarray(summary.visit_counts),
                       f"{i}/root_value": np.asarray(out.search_tree.node_values[:, 0]),
                       f"{i}/qvalues": np.asarray(summary.qvalues)})
    os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
    np.savez_compressed(GOLDEN_PATH, **arrays)


@pytest.mark.parametrize("case_index", range(len(GOLDEN_CASES)))
def test_equals_mctx_golden_values(case_index):
    golden = np.load(GOLDEN_PATH)
    A, n, m, discount, B, _ = GOLDEN_CASES[case_index]
    problem = golden_problem(case_index)
    out = gumbel_search(problem["root_logits"], problem["root_value"], problem["root_state"],
                        lambda state, actions: table_step(problem, state, actions),
                        num_simulations=n, max_num_considered_actions=m, gumbel=problem["gumbel"],
                        discount=discount, invalid_actions=problem["invalid"])
    expected = {key.split("/")[1]: golden[key] for key in golden.files
                if key.startswith(f"{case_index}/")}
    np.testing.assert_array_equal(out.visit_counts, expected["visit_counts"])
    np.testing.assert_array_equal(out.action, expected["action"])
    np.testing.assert_allclose(out.improved_policy, expected["improved_policy"], atol=1e-5)
    np.testing.assert_allclose(out.root_value, expected["root_value"], atol=1e-5)
    visited = out.visit_counts > 0                 # mctx's summary Q is r + γ·v on visited actions
    np.testing.assert_allclose(out.completed_q[visited], expected["qvalues"][visited], atol=1e-5)


# --- sequential halving ---------------------------------------------------------------------------

def test_sequential_halving_sequences_by_hand():
    assert considered_visits_sequence(8, 24) == (0,) * 8 + (1,) * 4 + (2,) * 4 + (3, 3, 4, 4, 5, 5,
                                                                                  6, 6)
    assert considered_visits_sequence(4, 16) == (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)
    assert considered_visits_sequence(3, 7) == (0, 0, 0, 1, 1, 2, 2)
    assert considered_visits_sequence(5, 12) == (0,) * 5 + (1, 1, 2, 2, 3, 3, 4)
    assert considered_visits_sequence(4, 3) == (0, 0, 0)          # n < m
    assert considered_visits_sequence(1, 4) == (0, 1, 2, 3)        # m = 1
    assert considered_visits_sequence(2, 5) == (0, 0, 1, 1, 2)


# --- closed-form cases ----------------------------------------------------------------------------

def test_bandit_with_discount_zero():
    """Q(a) = reward(a) exactly; with 16 simulations and m = 4 every action is visited."""
    rewards = np.array([0.1, 0.9, 0.5, 0.3], np.float32)
    logits = np.array([[0.0, 0.2, 0.1, -0.1]], np.float32)

    def recurrent_fn(state, actions):
        return (state, rewards[actions], np.zeros(len(actions), np.float32),
                np.zeros((len(actions), 4), np.float32))

    out = gumbel_search(logits, np.zeros(1, np.float32), np.zeros((1, 1)), recurrent_fn,
                        num_simulations=16, max_num_considered_actions=4,
                        gumbel=np.zeros((1, 4), np.float32), discount=0.0)
    # Halving table 0,0,0,0,1,1,1,1 | 2,2,3,3,4,4,5,5: two visits each, then the best two by
    # logits + σ(q̂) (actions 1 and 2, the highest rewards) take the remaining 8 visits.
    np.testing.assert_array_equal(out.completed_q[0], rewards)
    assert out.visit_counts[0].sum() == 16
    np.testing.assert_array_equal(out.visit_counts[0], [2, 6, 6, 2])
    sigma = (50 + 6) * 0.1 * (rewards - rewards.min()) / (rewards.max() - rewards.min())
    np.testing.assert_allclose(out.improved_policy[0], softmax(logits[0] + sigma), atol=1e-6)
    assert out.action[0] == 1
    expected_root = (0.0 + (rewards * out.visit_counts[0]).sum()) / 17
    np.testing.assert_allclose(out.root_value[0], expected_root, rtol=1e-6)


def _bandit(rewards_by_row, logits, **switches):
    """A batch of bandits (discount 0): Q(a) = rewards_by_row[b, a]."""
    rewards_by_row = np.asarray(rewards_by_row, np.float32)
    B, A = rewards_by_row.shape

    def recurrent_fn(state, actions):
        return (state, rewards_by_row[state[:, 0], actions], np.zeros(len(actions), np.float32),
                np.zeros((len(actions), A), np.float32))

    return gumbel_search(np.asarray(logits, np.float32), np.zeros(B, np.float32),
                         np.arange(B)[:, None], recurrent_fn, num_simulations=16,
                         max_num_considered_actions=4, gumbel=np.zeros((B, A), np.float32),
                         discount=0.0, **switches)


def _table_search(discount, root_value, root_logits, children, num_simulations):
    """One tree over a lookup table: children[(node, action)] = (child, reward, value, logits);
    the state is the node id. q_normalization='tree', c_visit 50, c_scale 0.1, δ 0.01, no noise."""

    def recurrent_fn(state, actions):
        rows = [children[(int(node), int(action))] for node, action in zip(state[:, 0], actions)]
        return (np.array([[r[0]] for r in rows]), np.array([r[1] for r in rows], np.float32),
                np.array([r[2] for r in rows], np.float32), np.array([r[3] for r in rows],
                                                                      np.float32))

    return gumbel_search(np.array([root_logits], np.float32), np.array([root_value], np.float32),
                         np.zeros((1, 1), np.int64), recurrent_fn, num_simulations=num_simulations,
                         max_num_considered_actions=2, gumbel=np.zeros((1, 2), np.float32),
                         discount=discount, q_normalization="tree", value_delta_max=0.01)


# Expected values below follow the official C++ tree by hand (ez/mcts/ctree: CMinMaxStats::update
# and normalize, back_propagate): each simulation folds r + γ·G of every edge on its path and the
# root's own γ·G into one min/max per tree.

def test_tree_normalisation_folds_returns_and_the_root_entry_by_hand():
    """γ = 0.5, v̂(root) = 1, logits [1, 0]. Simulation 1: a0 (r 1, v 2) folds 1 + 0.5·2 = 2 and the
    root's 0.5·2 = 1; simulation 2: a1 (r 0, v 1) folds 0.5 and 0.25. min 0.25, max 2."""
    children = {(0, 0): (1, 1.0, 2.0, [0.0, 0.0]), (0, 1): (2, 0.0, 1.0, [0.0, 0.0])}
    out = _table_search(0.5, 1.0, [1.0, 0.0], children, 2)
    np.testing.assert_allclose(out.completed_q[0], [2.0, 0.5], rtol=1e-6)
    q_hat = np.array([1.0, (0.5 - 0.25) / 1.75])
    np.testing.assert_allclose(out.improved_policy[0], softmax(np.array([1.0, 0.0]) + 5.1 * q_hat),
                               rtol=1e-5)
    np.testing.assert_allclose(out.root_value[0], (1.0 + 2.0 + 0.5) / 3, rtol=1e-6)


def test_tree_normalisation_on_a_two_level_tree_by_hand():
    """γ = 0.997, v̂(root) = 0.4, logits [0.2, 0]; a0 (r 0.5, v 1), a1 (r −0.2, v 0.3), and a0's
    child by action 0 (r 0.3, v 2). Folded: 1.497, 1.492509 | 0.0991, 0.0988027 | 2.294, 2.787118,
    2.778757: min 0.0988027, max 2.787118. Q = [0.5 + 0.997·(1 + 2.294)/2, 0.0991]."""
    children = {(0, 0): (1, 0.5, 1.0, [0.0, 0.0]), (0, 1): (2, -0.2, 0.3, [0.0, 0.0]),
                (1, 0): (3, 0.3, 2.0, [0.0, 0.0]), (1, 1): (4, 0.0, 0.0, [0.0, 0.0])}
    out = _table_search(0.997, 0.4, [0.2, 0.0], children, 3)
    np.testing.assert_array_equal(out.visit_counts[0], [2, 1])
    q = np.array([0.5 + 0.997 * (1.0 + 2.294) / 2, 0.0991])
    np.testing.assert_allclose(out.completed_q[0], q, rtol=1e-5)
    low, high = 0.0988027, 2.787118
    q_hat = (q - low) / (high - low)                     # [0.760051, 0.000111]
    np.testing.assert_allclose(out.improved_policy[0],
                               softmax(np.array([0.2, 0.0]) + 5.2 * q_hat), rtol=1e-5)
    np.testing.assert_allclose(out.improved_policy[0], [0.984506, 0.015494], atol=1e-5)
    np.testing.assert_allclose(out.root_value[0], (0.4 + 1.497 + 0.0991 + 2.787118) / 4, rtol=1e-5)


def test_tree_normalisation_floors_a_small_range_and_leaves_a_zero_range_unscaled():
    """One simulation, γ = 0.997, v̂(root) = 0.5, logits [1, 0], a0 visited.
    (r 1, v 1): folded 1.997 and 1.991009, a range of 0.005991 < δ: q̂(a0) = 0.005991 / 0.01; the
    unvisited a1's mixed value (0.5 + 1.997) / 2 = 1.2485 lies below the min: clipped to 0.
    (r 0, v 0): folded 0 and 0, a zero range: Q is used unscaled, then clipped: q̂(a0) = 0, and the
    mixed value of a1, (0.5 + 0) / 2 = 0.25 (mctx's mixed value; the official tree's differs), is
    q̂(a1) = 0.25, so the unvisited action gets the larger σ."""
    small = _table_search(0.997, 0.5, [1.0, 0.0], {(0, 0): (1, 1.0, 1.0, [0.0, 0.0])}, 1)
    q_hat = np.array([(1.997 - 1.991009) / 0.01, 0.0])
    np.testing.assert_allclose(small.improved_policy[0],
                               softmax(np.array([1.0, 0.0]) + 5.1 * q_hat), rtol=1e-4)
    np.testing.assert_allclose(small.root_value[0], 1.2485, rtol=1e-6)
    zero = _table_search(0.997, 0.5, [1.0, 0.0], {(0, 0): (1, 0.0, 0.0, [0.0, 0.0])}, 1)
    np.testing.assert_allclose(zero.improved_policy[0],
                               softmax(np.array([1.0, 0.0]) + 5.1 * np.array([0.0, 0.25])),
                               rtol=1e-6)


def test_tree_wide_statistics_are_kept_per_tree():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=(5, 4)).astype(np.float32) * np.array([[0.01], [1], [5], [0.1], [2]])
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    together = _bandit(rewards, logits, q_normalization="tree", value_delta_max=0.5)
    for b in range(5):
        alone = _bandit(rewards[b:b + 1], logits[b:b + 1], q_normalization="tree",
                        value_delta_max=0.5)
        np.testing.assert_array_equal(together.visit_counts[b], alone.visit_counts[0])
        np.testing.assert_allclose(together.improved_policy[b], alone.improved_policy[0],
                                   atol=1e-6)
    with pytest.raises(ValueError, match="q_normalization"):
        _bandit(rewards, logits, q_normalization="global")


def test_two_level_model_root_value_and_completed_q_by_hand():
    """A=2, n=2, m=2: each root action visited once; q(a) = r(a) + γ v(child)."""
    discount = 0.5

    def recurrent_fn(state, actions):
        reward = np.where(actions == 0, 1.0, 2.0).astype(np.float32)
        value = np.where(actions == 0, 4.0, -2.0).astype(np.float32)
        return state, reward, value, np.zeros((len(actions), 2), np.float32)

    out = gumbel_search(np.zeros((1, 2), np.float32), np.array([3.0], np.float32), np.zeros((1, 1)),
                        recurrent_fn, num_simulations=2, max_num_considered_actions=2,
                        gumbel=np.zeros((1, 2), np.float32), discount=discount)
    np.testing.assert_array_equal(out.visit_counts[0], [1, 1])
    np.testing.assert_allclose(out.completed_q[0], [1 + 0.5 * 4, 2 + 0.5 * -2])
    np.testing.assert_allclose(out.root_value[0], (3.0 + 3.0 + 1.0) / 3)
    assert out.action[0] == 0                  # equal visits: the higher q
    sigma = np.array([(50 + 1) * 0.1 * 1.0, 0.0])
    np.testing.assert_allclose(out.improved_policy[0], softmax(sigma), atol=1e-6)


def test_mixed_value_completes_unvisited_actions():
    """n=1: only the chosen action is visited; the other is completed with the mixed value."""
    def recurrent_fn(state, actions):
        return state, np.ones(1, np.float32), np.zeros(1, np.float32), np.zeros((1, 3), np.float32)

    logits = np.array([[2.0, 0.0, 0.0]], np.float32)
    out = gumbel_search(logits, np.array([0.5], np.float32), np.zeros((1, 1)), recurrent_fn,
                        num_simulations=1, max_num_considered_actions=3,
                        gumbel=np.zeros((1, 3), np.float32), discount=0.9)
    assert out.action[0] == 0
    mixed = (0.5 + 1 * 1.0) / 2                # prior-weighted mean over the single visited action
    np.testing.assert_allclose(out.completed_q[0], [1.0, mixed, mixed], rtol=1e-6)


# --- against the slow reference -------------------------------------------------------------------

@pytest.mark.parametrize("A, n, m, B", [(2, 1, 2, 5), (3, 4, 4, 5), (4, 16, 4, 5), (6, 50, 16, 5),
                                        (4, 16, 1, 5), (5, 24, 4, 5), (2, 16, 2, 5), (3, 50, 2, 5),
                                        (4, 4, 16, 5), (4, 16, 4, 300)])
@pytest.mark.parametrize("q_normalization", ["node", "tree"])
def test_equals_reference_on_random_problems(A, n, m, B, q_normalization):
    """B=300 also takes the whole-row argmax path (ROWWISE_ARGMAX_MIN_COLUMNS)."""
    for seed in range(3 if B < 100 else 1):
        model = HashModel(A, seed)
        rng = np.random.default_rng(seed)
        roots = [model.step_one((100 + b,), 0) for b in range(B)]
        roots = [((100 + b,), r[2], r[3]) for b, r in enumerate(roots)]
        gumbel = rng.gumbel(size=(B, A)).astype(np.float32)
        invalid = rng.random((B, A)) < 0.3
        invalid[:, 0] = False
        discount = [0.997, 0.0, 0.5][seed]

        root_ids = np.arange(B)

        # The batched search sees a path-encoded state; the reference sees tuples.
        def batched(state, actions, model=model, root_ids=root_ids):
            paths, lengths = state
            out = [model.step_one((100 + int(b),) + tuple(int(x) for x in p[:k]), a)
                   for b, p, k, a in zip(root_ids, paths, lengths, actions)]
            new_paths = paths.copy()
            new_paths[np.arange(len(actions)), lengths] = actions
            return ((new_paths, lengths + 1), np.array([o[1] for o in out]),
                    np.array([o[2] for o in out]), np.stack([o[3] for o in out]))

        state = (np.zeros((B, n + 1), np.int64), np.zeros(B, np.int64))
        logits = np.stack([r[2] for r in roots])
        values = np.array([r[1] for r in roots], np.float32)
        out = gumbel_search(logits, values, state, batched, num_simulations=n,
                            max_num_considered_actions=m, gumbel=gumbel, discount=discount,
                            invalid_actions=invalid, q_normalization=q_normalization)
        for b in range(B):
            action, policy, visits, completed, root_value = reference_search(
                logits[b], values[b], roots[b][0], model.step_one, num_simulations=n,
                max_num_considered_actions=m, gumbel=gumbel[b], discount=discount,
                invalid=invalid[b], q_normalization=q_normalization)
            np.testing.assert_array_equal(out.visit_counts[b], visits)
            assert out.action[b] == action
            np.testing.assert_allclose(out.improved_policy[b], policy, atol=1e-5)
            np.testing.assert_allclose(out.completed_q[b], completed, atol=1e-5)
            np.testing.assert_allclose(out.root_value[b], root_value, atol=1e-5)
            assert not np.any(out.visit_counts[b][invalid[b]])
            assert not invalid[b, out.action[b]]


@pytest.mark.parametrize("num_actions", [1, 2, 3, 6])
@pytest.mark.parametrize("columns", [5, mcts.ROWWISE_ARGMAX_MIN_COLUMNS + 3])
def test_argmax_actions_matches_numpy_first_index_on_ties(num_actions, columns):
    rng = np.random.default_rng(num_actions)
    scores = rng.integers(0, 3, size=(num_actions, columns)).astype(np.float32)
    scores[:, 0] = -np.inf                                     # all -inf: index 0, as np.argmax
    np.testing.assert_array_equal(mcts._argmax_actions(scores), scores.argmax(axis=0))


def test_batch_independence():
    A, n, m, B = 4, 16, 4, 6
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(B, A)).astype(np.float32)
    values = rng.normal(size=B).astype(np.float32)
    gumbel = rng.gumbel(size=(B, A)).astype(np.float32)
    table = rng.normal(size=(1000, 2 + A)).astype(np.float32)

    def recurrent_fn(state, actions):          # the state is a node id; outputs a table lookup
        child = (state * 7 + actions + 1) % 1000
        return child, table[child, 0], table[child, 1], table[child, 2:]

    def search(rows):
        return gumbel_search(logits[rows], values[rows], np.arange(B)[rows] * 13, recurrent_fn,
                             num_simulations=n, max_num_considered_actions=m, gumbel=gumbel[rows],
                             discount=0.997)

    together = search(np.arange(B))
    for b in range(B):
        alone = search(np.array([b]))
        for field in mcts.SearchOutput._fields:
            np.testing.assert_array_equal(getattr(together, field)[b], getattr(alone, field)[0])


def test_invalid_actions_never_visited_and_single_valid_action_chosen():
    A = 5
    invalid = np.array([[True, True, False, True, True],
                        [False, True, False, True, False]])

    def recurrent_fn(state, actions):
        B = len(actions)
        return state, np.ones(B, np.float32), np.ones(B, np.float32), np.zeros((B, A), np.float32)

    logits = np.array([[5.0, 5.0, -5.0, 5.0, 5.0], [0.0, 9.0, 0.0, 9.0, 0.0]], np.float32)
    out = gumbel_search(logits, np.zeros(2, np.float32), np.zeros((2, 1)), recurrent_fn,
                        num_simulations=8, max_num_considered_actions=4,
                        gumbel=np.full((2, A), 3.0, np.float32), discount=0.9,
                        invalid_actions=invalid)
    assert out.action[0] == 2 and out.visit_counts[0, 2] == 8
    assert not out.visit_counts[invalid].any()
    assert out.improved_policy[invalid].max() == 0.0
    np.testing.assert_allclose(out.improved_policy.sum(-1), 1.0, rtol=1e-6)


def test_all_actions_invalid_row_stays_finite():
    """As mctx: m = 0 uses the table of m <= 1, argmax over -inf scores is 0,
    the policy is uniform."""
    def recurrent_fn(state, actions):
        B = len(actions)
        return state, np.ones(B, np.float32), np.ones(B, np.float32), np.zeros((B, 3), np.float32)

    invalid = np.array([[True, True, True], [False, True, False]])
    out = gumbel_search(np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.zeros((2, 1)),
                        recurrent_fn, num_simulations=4, max_num_considered_actions=3,
                        gumbel=np.zeros((2, 3), np.float32), discount=0.9,
                        invalid_actions=invalid)
    assert np.isfinite(out.improved_policy).all() and np.isfinite(out.root_value).all()
    np.testing.assert_allclose(out.improved_policy[0], [1 / 3] * 3, rtol=1e-6)
    assert out.action[0] == 0 and out.visit_counts[0].sum() == 4
    assert out.improved_policy[1, 1] == 0.0 and out.visit_counts[1, 1] == 0


def test_depth_n_chain_and_tuple_states():
    """A=1: simulation i expands depth i + 1 from the state of depth i; the state tuple carries the
    depth and a [B, 2] array, and the edge reward is the parent's depth + 1."""
    calls = []

    def recurrent_fn(state, actions):
        depth, features = state
        np.testing.assert_array_equal(depth, [len(calls)] * 2)       # the right parent was gathered
        np.testing.assert_array_equal(features,
                                      np.stack([depth, -depth], axis=1) + [[0, 10], [5, 10]])
        calls.append(depth)
        return ((depth + 1, features + [[1, -1]]), (depth + 1).astype(np.float32),
                np.zeros(len(actions), np.float32), np.zeros((len(actions), 1), np.float32))

    n = 6
    out = gumbel_search(np.zeros((2, 1), np.float32), np.zeros(2, np.float32),
                        (np.zeros(2, np.int64), np.array([[0, 10], [5, 10]])), recurrent_fn,
                        num_simulations=n, max_num_considered_actions=4,
                        gumbel=np.zeros((2, 1), np.float32), discount=1.0)
    np.testing.assert_array_equal(out.visit_counts, [[n], [n]])
    # Simulation i backs up 1 + 2 + ... + (i + 1) to the root (leaf value 0, discount 1).
    returns = [(i + 1) * (i + 2) / 2 for i in range(n)]
    np.testing.assert_allclose(out.root_value, sum(returns) / (n + 1), rtol=1e-6)


def test_search_with_model_adapter():
    class Output:
        def __init__(self, state, reward, value, policy_logits):
            self.state, self.reward, self.value, self.policy_logits = state, reward, value, \
                policy_logits

    class Model:
        def recurrent_inference(self, state, actions):
            B = len(actions)
            return Output(state, actions.astype(np.float32), np.zeros(B, np.float32),
                          np.zeros((B, 3), np.float32))

    root = Output((np.zeros((2, 1)),), np.zeros(2), np.zeros(2, np.float32),
                  np.zeros((2, 3), np.float32))
    out = mcts.search_with_model(Model(), root, np.zeros((2, 3), np.float32), num_simulations=6,
                                 max_num_considered_actions=3, discount=0.0, c_visit=50.0,
                                 c_scale=0.1)
    np.testing.assert_array_equal(out.action, [2, 2])
    np.testing.assert_allclose(out.completed_q[0], [0.0, 1.0, 2.0])


def test_sample_gumbel_is_seeded_and_scaled():
    a = mcts.sample_gumbel(np.random.default_rng(0), (3, 4), 2.0)
    b = mcts.sample_gumbel(np.random.default_rng(0), (3, 4), 1.0)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, 2 * b, rtol=1e-6)
    assert math.isclose(float(np.mean(mcts.sample_gumbel(np.random.default_rng(1), 20000))),
                        0.5772, abs_tol=0.03)


if __name__ == "__main__":
    _generate_golden_fixtures()


def test_a_recurrent_fn_with_wrong_shapes_is_named():
    def recurrent_fn(state, actions):
        return state, np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros((2, 4), np.float32)

    with pytest.raises(ValueError, match=r"expected \(2,\), \(2,\), \(2, 3\)"):
        mcts.gumbel_search(np.zeros((2, 3), np.float32), np.zeros(2, np.float32),
                           np.zeros((2, 1), np.float32), recurrent_fn, num_simulations=2,
                           max_num_considered_actions=2, gumbel=np.zeros((2, 3), np.float32),
                           discount=0.99)
