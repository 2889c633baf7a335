"""mcts_sampled.py: the halving schedule as the official code counts it, small trees worked out by
hand from the official tree's rules, and the path through the search on a model of table
lookups."""

import gzip
import json
import os

import numpy as np
import pytest

from mcts_sampled import halving_schedule, sampled_search

GAMMA = 0.9


def table_model(steps: list[tuple[float, float]], num_children: int = 2, action_dims: int = 1):
    """recurrent_fn whose i-th call returns reward and value steps[i] for every tree, the state
    counting the calls, and children whose actions name the call (call + 0.1·child)."""
    calls = []

    def recurrent_fn(state, actions):
        i = len(calls)
        calls.append(np.array(actions))
        batch = len(actions)
        reward, value = steps[i]
        children = np.broadcast_to((i + 0.1 * np.arange(num_children))[None, :, None],
                                   (batch, num_children, action_dims))
        return state + 1, np.full(batch, reward), np.full(batch, value), children, None

    return recurrent_fn, calls


@pytest.mark.parametrize("simulations, considered, expected", [
    (32, 16, {15: 8, 23: 4, 31: 2}),          # the DMC settings: 1, 1, 2 visits per phase
    (16, 16, {15: 8}),
    (50, 16, {15: 8, 23: 4, 35: 2, 49: 1}),
    (20, 8, {7: 4, 11: 2, 19: 1}),
    (4, 4, {3: 2}),
    (4, 16, {}),                               # too few simulations for the first phase to end
    (8, 1, {}),
])
def test_halving_schedule_counts_phases_as_the_official_code(simulations, considered, expected):
    assert halving_schedule(simulations, considered) == expected


def candidates_of(count: int) -> np.ndarray:
    return np.linspace(-0.9, 0.9, count, dtype=np.float32).reshape(1, count, 1)


def test_four_candidates_one_visit_each_by_hand():
    # Candidate c returns (r, v); Q = r + γv = 1.0, 0.18, 0.75, 0. The tree's range holds every
    # backed-up return, Q and the root's γQ: min 0, max 1, so q̂ = Q and σ = (50 + 1)·0.1·q̂.
    model, calls = table_model([(0.1, 1.0), (0.0, 0.2), (0.3, 0.5), (0.0, 0.0)])
    out = sampled_search(np.array([0.5]), np.zeros((1, 3)), candidates_of(4), model,
                         num_simulations=4, discount=GAMMA)
    np.testing.assert_array_equal(np.concatenate(calls)[:, 0], candidates_of(4)[0, :, 0])
    np.testing.assert_array_equal(out.visit_counts, [[1, 1, 1, 1]])
    np.testing.assert_allclose(out.completed_q, [[1.0, 0.18, 0.75, 0.0]], rtol=1e-6)
    sigma = 5.1 * np.array([1.0, 0.18, 0.75, 0.0])
    np.testing.assert_allclose(out.improved_policy[0], np.exp(sigma) / np.exp(sigma).sum(),
                               rtol=1e-5)
    # The halving after simulation 3 keeps c0 and c2, and c0 leads.
    assert out.chosen.tolist() == [0]
    np.testing.assert_array_equal(out.action, candidates_of(4)[:, 0])
    # SVE: the mean of the root's network value and the returns backed up into it, each a Q.
    np.testing.assert_allclose(out.root_value, [(0.5 + 1.0 + 0.18 + 0.75 + 0.0) / 5], rtol=1e-6)


def test_two_more_simulations_go_below_the_kept_candidates_by_hand():
    # Simulation 4 visits c0 (kept, fewest visits, first), whose two children are unexpanded:
    # both complete to v_mix = value(c0) = 1.0, a tie that goes to child 0, (r, v) = (0.2, 0.4).
    # Then value(c0) = (1.0 + 0.56) / 2 = 0.78 and the root gets 0.1 + 0.9·0.56 = 0.604.
    # Simulation 5 visits c2 (1 visit against 2): its child 0 returns (0, 0), value(c2) = 0.25.
    steps = [(0.1, 1.0), (0.0, 0.2), (0.3, 0.5), (0.0, 0.0), (0.2, 0.4), (0.0, 0.0)]
    model, calls = table_model(steps)
    out = sampled_search(np.array([0.5]), np.zeros((1, 3)), candidates_of(4), model,
                         num_simulations=6, discount=GAMMA)
    # The fifth and sixth calls expand the first child of c0 (made by call 0) and of c2 (call 2).
    np.testing.assert_allclose(np.concatenate(calls)[4:, 0], [0.0, 2.0])
    np.testing.assert_array_equal(out.visit_counts, [[2, 1, 2, 1]])
    q = np.array([0.1 + GAMMA * 0.78, 0.18, 0.3 + GAMMA * 0.25, 0.0])
    np.testing.assert_allclose(out.completed_q[0], q, rtol=1e-6)
    sigma = (50 + 2) * 0.1 * q                       # the range is still [0, 1]
    np.testing.assert_allclose(out.improved_policy[0], np.exp(sigma) / np.exp(sigma).sum(),
                               rtol=1e-5)
    assert out.chosen.tolist() == [0]                # the last halving keeps one: c0
    returns = [0.5, 1.0, 0.18, 0.75, 0.0, 0.1 + GAMMA * 0.56, 0.3]
    np.testing.assert_allclose(out.root_value, [np.mean(returns)], rtol=1e-6)


def test_a_narrow_range_is_floored_and_an_empty_one_leaves_q_raw():
    # Every return within 0.004 of each other: q̂ = (Q − min) / 0.01, not / 0.004.
    model, _ = table_model([(0.0, 0.100), (0.0, 0.104), (0.0, 0.102), (0.0, 0.101)])
    out = sampled_search(np.array([0.1]), np.zeros((1, 1)), candidates_of(4), model,
                         num_simulations=4, discount=1.0)
    q = np.array([0.100, 0.104, 0.102, 0.101])
    sigma = 5.1 * (q - 0.100) / 0.01
    np.testing.assert_allclose(out.improved_policy[0], np.exp(sigma) / np.exp(sigma).sum(),
                               rtol=1e-4)
    assert out.chosen.tolist() == [1]
    # All returns equal: the range is empty and q̂ is Q itself, clipped to [0, 1].
    model, _ = table_model([(0.0, 2.0)] * 4)
    out = sampled_search(np.array([2.0]), np.zeros((1, 1)), candidates_of(4), model,
                         num_simulations=4, discount=1.0)
    np.testing.assert_allclose(out.improved_policy, np.full((1, 4), 0.25), rtol=1e-6)
    assert out.chosen.tolist() == [0]


def golden_problems():
    path = os.path.join(os.path.dirname(__file__), "data", "sampled_search_golden.json.gz")
    with gzip.open(path, "rt") as file:
        sets = json.load(file)["sets"]
    return [pytest.param(problem, id=problem["id"]) for problems in sets.values()
            for problem in problems]


# Actions that name their node: candidate k is 1000 + k, child c made by call i 2000 + 10i + c.
ROOT_ACTION, CHILD_ACTION = 1000, 2000


@pytest.mark.parametrize("problem", golden_problems())
def test_equals_the_official_tree(problem):
    """Golden values from the official C++ tree (tests/data/sampled_search_golden.json.gz: the
    official `ez/mcts/ctree` compiled in a scratch folder and driven as `search_continuous` drives
    it, with tables for the network): 144 problems, the DMC settings (K=16, n=32) and others for
    the halving schedule, Gumbel noise, ranges below the floor and ties. Besides the outputs, the
    node expanded at every simulation: its parent's state slot and the child taken there."""
    settings = problem["settings"]
    batch, num_candidates = len(problem["root_value"]), settings["num_actions"]
    rewards = np.array(problem["rewards"], np.float32)                      # [n, B]
    values = np.array(problem["values"], np.float32)
    expanded = []

    def recurrent_fn(state, actions):
        call = len(expanded)
        expanded.append(actions[:, 0].copy())
        children = CHILD_ACTION + 10 * call + np.arange(settings["leaf_num"], dtype=np.float32)
        return (state, rewards[call], values[call],
                np.broadcast_to(children[None, :, None], (batch, settings["leaf_num"], 1)), None)

    candidates = (ROOT_ACTION + np.arange(num_candidates, dtype=np.float32))[None, :, None]
    out = sampled_search(np.array(problem["root_value"]), np.zeros((batch, 1)),
                         np.broadcast_to(candidates, (batch, num_candidates, 1)), recurrent_fn,
                         num_simulations=settings["num_simulations"],
                         discount=settings["discount"], c_visit=settings["c_visit"],
                         c_scale=settings["c_scale"],
                         value_delta_max=settings["value_minmax_delta"],
                         gumbel=np.array(problem["gumbel"], np.float32))
    actions = np.array(expanded)                                           # [n, B]
    from_root = actions < CHILD_ACTION
    parent_slot = np.where(from_root, 0, (actions - CHILD_ACTION) // 10 + 1)
    child = np.where(from_root, actions - ROOT_ACTION, (actions - CHILD_ACTION) % 10)
    np.testing.assert_array_equal(parent_slot, problem["parent_slot"])
    np.testing.assert_array_equal(child, problem["child"])
    np.testing.assert_array_equal(out.visit_counts, problem["visit_counts"])
    np.testing.assert_array_equal(out.chosen, problem["chosen"])
    np.testing.assert_array_equal(out.action[:, 0], ROOT_ACTION + np.array(problem["chosen"]))
    np.testing.assert_allclose(out.root_value, problem["sve"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.improved_policy, problem["improved_policy"], rtol=1e-6,
                               atol=1e-6)
    q = np.array([[row_v_mix if q is None else q for q in row]
                  for row, row_v_mix in zip(problem["q"], problem["v_mix"])])
    np.testing.assert_allclose(out.completed_q, q, rtol=1e-6, atol=1e-6)


def test_root_candidates_come_from_the_policy_then_from_its_widened_form():
    from mcts_sampled import root_candidates

    mean = np.array([[0.3, -1.0], [0.0, 2.0]], np.float32)
    std = np.array([[0.5, 0.2], [1.4, 0.1]], np.float32)
    rng = np.random.default_rng(7)
    candidates = root_candidates(mean, std, rng, from_policy=4, widened=12, widening=3.0,
                                 clip=0.999, explore=True)
    assert candidates.shape == (2, 16, 2) and candidates.dtype == np.float32
    assert np.abs(candidates).max() <= np.float32(0.999)
    # The same draws by hand: 4 from N(μ, σ), then 12 from N(μ, 3σ), squashed and clipped.
    rng = np.random.default_rng(7)
    first = np.tanh(mean[:, None] + std[:, None] * rng.standard_normal((2, 4, 2)))
    rest = np.tanh(mean[:, None] + 3 * std[:, None] * rng.standard_normal((2, 12, 2)))
    np.testing.assert_allclose(candidates, np.clip(np.concatenate([first, rest], 1), -0.999,
                                                   0.999), rtol=1e-6)
    # In evaluation all sixteen come from π itself.
    rng = np.random.default_rng(7)
    greedy = root_candidates(mean, std, rng, from_policy=4, widened=12, widening=3.0, clip=0.999,
                             explore=False)
    rng = np.random.default_rng(7)
    draws = np.concatenate([rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 12, 2))], 1)
    np.testing.assert_allclose(greedy, np.clip(np.tanh(mean[:, None] + std[:, None] * draws),
                                                -0.999, 0.999), rtol=1e-6)


def test_widened_candidates_spread_three_times_wider_before_the_tanh():
    from mcts_sampled import root_candidates

    mean, std = np.zeros((1, 1), np.float32), np.full((1, 1), 0.2, np.float32)
    candidates = root_candidates(mean, std, np.random.default_rng(0), from_policy=4000,
                                 widened=4000, widening=3.0, clip=0.999, explore=True)
    spread = np.arctanh(candidates[0, :, 0]).reshape(2, 4000).std(axis=1)
    np.testing.assert_allclose(spread, [0.2, 0.6], rtol=0.05)


def test_the_corrected_prior_is_the_official_log_ratio_of_policy_to_proposal():
    """log π(a) − (r log π(a) + (1 − r) log π_w(a)) summed over dimensions, each log-density the
    squashed Gaussian's with its tanh Jacobian (official `CyMCTS.sample_actions`' `probs`)."""
    from mcts_sampled import corrected_candidate_logits, root_candidates

    rng = np.random.default_rng(3)
    mean = rng.normal(size=(2, 3)).astype(np.float32)
    std = rng.uniform(0.2, 1.5, (2, 3)).astype(np.float32)
    candidates = root_candidates(mean, std, rng, from_policy=4, widened=12, widening=3.0,
                                 clip=0.999, explore=True)

    def log_density(scale):
        x = np.arctanh(candidates.astype(np.float64))
        s = scale * std[:, None].astype(np.float64)
        normal = -0.5 * ((x - mean[:, None]) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
        return (normal - np.log(1 - np.tanh(x) ** 2)).sum(-1)
    expected = log_density(1) - (0.25 * log_density(1) + 0.75 * log_density(3))
    np.testing.assert_allclose(corrected_candidate_logits(mean, std, candidates, from_policy=4,
                                                          widening=3.0), expected, rtol=1e-5)


@pytest.mark.parametrize("explore", [True, False], ids=["self-play", "evaluation"])
def test_the_papers_variant_adds_gumbel_noise_and_the_corrected_prior_when_exploring(explore):
    """With gumbel_scale 1 and the corrected prior, the search equals `sampled_search` given the
    Gumbel noise drawn after the candidates and the corrected logits; in evaluation neither."""
    from mcts_sampled import (
        corrected_candidate_logits,
        root_candidates,
        sample_squashed,
        search_with_sampled_model,
    )
    from networks import GaussianOutput

    class Model:
        def recurrent_inference(self, state, actions):
            value = np.tanh(actions.sum(-1) + state[0][:, 0])
            return GaussianOutput((state[0] + 1,), 0.1 * actions[:, 0], value,
                                  np.zeros_like(actions), np.ones_like(actions))

    mean = np.array([[0.3, -0.2], [1.0, 0.5]], np.float32)
    std = np.array([[0.5, 0.8], [1.2, 0.3]], np.float32)
    root = GaussianOutput((np.zeros((2, 1), np.float32),), np.zeros(2, np.float32),
                          np.array([0.2, -0.1], np.float32), mean, std)
    options = dict(num_simulations=8, discount=0.9, num_children=2, c_visit=50.0, c_scale=0.1,
                   value_delta_max=0.01, policy_candidates=2, widened_candidates=2,
                   candidate_std_widening=3.0, action_clip=0.999)
    output = search_with_sampled_model(Model(), root, np.random.default_rng(5), explore=explore,
                                       gumbel_scale=1.0, corrected_prior=True, **options)
    rng = np.random.default_rng(5)
    candidates = root_candidates(mean, std, rng, from_policy=2, widened=2, widening=3.0,
                                 clip=0.999, explore=explore)
    gumbel = rng.gumbel(size=(2, 4)).astype(np.float32) if explore else None
    logits = (corrected_candidate_logits(mean, std, candidates, from_policy=2, widening=3.0)
              if explore else None)

    def recurrent_fn(state, actions):
        step = Model().recurrent_inference((state,), actions)
        return (step.state[0], step.reward, step.value,
                sample_squashed(step.policy_mean, step.policy_std, rng, 2, 0.999), None)
    expected = sampled_search(root.value, root.state[0], candidates, recurrent_fn,
                              num_simulations=8, discount=0.9, gumbel=gumbel,
                              candidate_logits=logits)
    for name in ("improved_policy", "chosen", "root_value", "visit_counts"):
        np.testing.assert_array_equal(getattr(output, name), getattr(expected, name), name)
    if explore:
        assert np.abs(logits).min() > 0 and np.abs(gumbel).min() > 0     # both change the root
