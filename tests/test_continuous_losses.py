"""learner.py's squashed-Gaussian policy losses against plain NumPy: the full loss (the paper's
Eq. 6, the official choice for one action dimension), the simple loss (Eq. 7) and the Monte Carlo
entropy, with the official tanh Jacobian 2(log 2 − x − softplus(−2x))."""

import numpy as np
import pytest
import tensorflow as tf

from learner import continuous_policy_loss, squashed_entropy, squashed_log_prob

MEAN = np.array([[0.3, -1.2], [2.0, 0.0]], np.float32)              # [B=2, A=2]
STD = np.array([[0.5, 1.4], [0.2, 3.0]], np.float32)


def log_prob_numpy(mean, std, actions):
    """Σ_a log N(atanh y; μ, σ) − 2(log 2 − x − softplus(−2x)), x = atanh y."""
    x = np.arctanh(actions.astype(np.float64))
    normal = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return (normal - 2 * (np.log(2) - x - np.logaddexp(0, -2 * x))).sum(-1)


def test_log_prob_sums_the_squashed_density_over_action_dimensions():
    actions = np.array([[[0.999, -0.5], [0.1, -0.999]], [[-0.3, 0.7], [0.95, 0.0]]], np.float32)
    np.testing.assert_allclose(squashed_log_prob(MEAN, STD, actions),
                               log_prob_numpy(MEAN, STD, actions), rtol=1e-4)


def test_full_loss_is_the_improved_policy_cross_entropy_over_the_candidates():
    rng = np.random.default_rng(0)
    candidates = np.clip(np.tanh(rng.normal(size=(2, 16, 2))), -0.999, 0.999).astype(np.float32)
    improved = rng.dirichlet(np.ones(16), size=2).astype(np.float32)
    loss = continuous_policy_loss(MEAN, STD, candidates, improved, None, full=True, clip=0.999)
    expected = -(improved * log_prob_numpy(MEAN[:, None], STD[:, None], candidates)).sum(1)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_simple_loss_is_minus_the_log_density_of_the_clipped_acted_candidate():
    acted = np.array([[1.0, -0.2], [0.5, -1.0]], np.float32)        # ±1 clip to ±0.999
    loss = continuous_policy_loss(MEAN, STD, None, None, acted, full=False, clip=0.999)
    np.testing.assert_allclose(loss, -log_prob_numpy(MEAN, STD, np.clip(acted, -0.999, 0.999)),
                               rtol=1e-4)


def test_entropy_is_the_mean_negative_log_density_of_the_draws_with_gradients_through_them():
    noise = np.random.default_rng(1).standard_normal((1024, 2, 2)).astype(np.float32)
    actions = np.clip(np.tanh(MEAN + STD * noise), -0.999, 0.999)
    expected = -log_prob_numpy(MEAN, STD, actions).mean(0)
    np.testing.assert_allclose(squashed_entropy(MEAN, STD, noise, 0.999), expected, rtol=1e-4)
    # The gradient is the total derivative with the noise fixed (the draws move with μ), as a
    # central difference of the NumPy estimate shows.
    mean = tf.Variable(MEAN)
    with tf.GradientTape() as tape:
        entropy = tf.reduce_sum(squashed_entropy(mean, STD, noise, 0.999))
    gradient = tape.gradient(entropy, mean).numpy()
    step = 1e-3
    for index in np.ndindex(MEAN.shape):
        shift = np.zeros_like(MEAN, np.float64)
        shift[index] = step
        up, down = (-log_prob_numpy(MEAN + s, STD, np.clip(np.tanh(MEAN + s + STD * noise),
                                                           -0.999, 0.999)).mean(0).sum()
                    for s in (shift, -shift))
        assert gradient[index] == pytest.approx((up - down) / (2 * step), rel=2e-2, abs=1e-3)
