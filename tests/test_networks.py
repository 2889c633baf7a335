"""networks.py: the scalar transform and two-hot support, shapes of h/g/f and the SimSiam heads, the
value-prefix adapter against direct dynamics calls, zero-initialised heads, weight round trips and
no retracing. Tiny networks (the `smoke` preset) except one shape and parameter-count check of the
full Atari network."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import config as cfg
from envs import FrameStacker
from networks import (
    EfficientZeroNet,
    compiled_call,
    inverse_scalar_transform,
    logits_to_scalar,
    min_max_scale,
    scalar_to_two_hot,
    scalar_transform,
    stack_frames,
)

ATARI_SHAPE = (96, 96, 12)
S = 300


def smoke_config(**changes):
    return dataclasses.replace(cfg.smoke(), **changes)


def random_observations(rng, batch, shape=ATARI_SHAPE):
    return rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)


def randomize(net, seed):
    """Random weights everywhere (heads included), positive moving variances."""
    rng = np.random.default_rng(seed)
    weights = []
    for variable, value in zip(net.variables, net.get_weights()):
        if "variance" in variable.path:
            weights.append(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        else:
            weights.append((0.1 * rng.standard_normal(value.shape)).astype(value.dtype))
    net.set_weights(weights)


@pytest.fixture(scope="module")
def smoke_net():
    return EfficientZeroNet(cfg.smoke(), ATARI_SHAPE, 4)


@pytest.fixture(scope="module")
def random_smoke_net():
    net = EfficientZeroNet(cfg.smoke(), ATARI_SHAPE, 4)
    randomize(net, seed=1)
    return net


# --- support -------------------------------------------------------------------------------------

MAGNITUDES = [0.0, 1e-3, -1e-3, 0.5, -0.5, 1.0, -1.0, 12.3, -12.3, 300.0, -300.0, 1e4, -1e4]


def test_transform_matches_formula_and_inverse_round_trips():
    x = np.array(MAGNITUDES, np.float32)
    expected = np.sign(x) * (np.sqrt(np.abs(x).astype(np.float64) + 1) - 1) + 0.001 * x
    np.testing.assert_allclose(scalar_transform(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(inverse_scalar_transform(scalar_transform(x)).numpy(), x, rtol=1e-5,
                               atol=0)
    assert inverse_scalar_transform(0.0).numpy() == 0.0


def test_two_hot_of_an_integer_after_transform_hits_one_bin():
    for k in [0, 1, -1, 7, -42, 299]:
        x = inverse_scalar_transform(float(k))
        two_hot = scalar_to_two_hot(x, S).numpy()
        assert two_hot.shape == (2 * S + 1,)
        assert np.argmax(two_hot) == k + S
        assert two_hot[k + S] > 1 - 1e-4
        assert two_hot.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(scalar_to_two_hot(0.0, S).numpy(), np.eye(2 * S + 1)[S])


def test_two_hot_expectation_is_the_transformed_scalar_and_clips():
    x = np.array([[0.3, -2.7, 55.0], [1234.5, -0.01, 4.0]], np.float32)
    two_hot = scalar_to_two_hot(x, S).numpy()
    assert two_hot.shape == (2, 3, 2 * S + 1)
    assert (two_hot >= 0).all() and (np.count_nonzero(two_hot, axis=-1) <= 2).all()
    support = np.arange(-S, S + 1, dtype=np.float32)
    np.testing.assert_allclose((two_hot * support).sum(-1), scalar_transform(x).numpy(), rtol=1e-5,
                               atol=1e-6)
    beyond = scalar_to_two_hot(np.array([1e6, -1e6], np.float32), S).numpy()   # h(1e6) > 300
    np.testing.assert_array_equal(beyond, np.eye(2 * S + 1)[[2 * S, 0]])


def test_logits_of_a_two_hot_decode_to_the_scalar():
    x = np.array([0.0, 1e-3, -0.7, 3.0, -250.0, 1e4], np.float32)
    logits = tf.math.log(scalar_to_two_hot(x, S))
    np.testing.assert_allclose(logits_to_scalar(logits, S).numpy(), x, rtol=1e-4, atol=1e-6)


def test_a_finer_support_splits_h_between_the_nearest_multiples_of_its_scale():
    # support_size 2, scale 0.25: 17 points -2, -1.75, ..., 2 of h-space. A MinAtar crossing's
    # reward 1 has h(1) = sqrt(2) - 1 + 0.001 = 0.415...: 0.34 of its mass on 0.5, 0.66 on 0.25.
    h_of_one = np.sqrt(2.0) - 1.0 + 1e-3
    two_hot = scalar_to_two_hot(np.float32(1.0), 2, 0.25).numpy()
    assert two_hot.shape == (17,)
    upper = (h_of_one - 0.25) / 0.25
    expected = np.zeros(17)
    expected[[9, 10]] = [1.0 - upper, upper]
    np.testing.assert_allclose(two_hot, expected, atol=1e-6)
    beyond = scalar_to_two_hot(np.array([100.0, -100.0], np.float32), 2, 0.25).numpy()  # h > 2
    np.testing.assert_array_equal(beyond, np.eye(17)[[16, 0]])
    x = np.array([0.0, 0.3, -0.7, 3.0, 7.0], np.float32)       # |h(x)| <= 2
    decoded = logits_to_scalar(tf.math.log(scalar_to_two_hot(x, 2, 0.25)), 2, 0.25).numpy()
    np.testing.assert_allclose(decoded, x, rtol=1e-4, atol=1e-6)


def test_the_support_scale_sets_the_heads_widths_and_scale_one_is_the_integers():
    config = dataclasses.replace(cfg.minatar(), support_size=3, support_scale=0.5)
    assert config.support_bins == 13
    net = EfficientZeroNet(config, (10, 10, 4), 3)
    out = net.initial_inference(np.zeros((2, 10, 10, 4), np.uint8))
    assert net.prediction.value_mlp.out.units == 13 and net.reward_head.mlp.out.units == 13
    np.testing.assert_array_equal(out.value, 0.0)           # zero logits: the mean point, h = 0
    x = np.array([0.3, -2.7, 55.0], np.float32)
    np.testing.assert_array_equal(scalar_to_two_hot(x, S, 1.0).numpy(),
                                  scalar_to_two_hot(x, S).numpy())
    with pytest.raises(ValueError, match="support_scale"):
        dataclasses.replace(cfg.minatar(), support_size=3, support_scale=0.4)


# --- shapes ---------------------------------------------------------------------------------------

def test_atari_network_shapes_and_parameter_counts():
    net = EfficientZeroNet(cfg.atari100k(), ATARI_SHAPE, 4)
    assert net.latent_shape == (6, 6, 64)
    # Official PyTorch model (Breakout, counted from ez/agents/models/base_model.py): the same
    # numbers except dynamics 2,392,105: torch's LSTM has two bias vectors (2 x 4 x 512), Keras 1.
    assert net.parameter_counts() == {"representation": 318_016, "dynamics": 2_390_057,
                                      "prediction": 133_149, "projection": 4_991_744,
                                      "total": 7_832_966}
    out = net.initial_inference(np.zeros((1, *ATARI_SHAPE), np.uint8))
    assert [s.shape for s in out.state] == [(1, 6, 6, 64), (1, 512), (1, 512), (1,), (1,)]


def test_conv_search_outputs_and_training_blocks(smoke_net):
    rng = np.random.default_rng(0)
    out = smoke_net.initial_inference(random_observations(rng, 3))
    assert [s.shape for s in out.state] == [(3, 6, 6, 16), (3, 32), (3, 32), (3,), (3,)]
    assert out.state[4].dtype == np.int32
    assert out.reward.shape == out.value.shape == (3,) and out.policy_logits.shape == (3, 4)
    step = smoke_net.recurrent_inference(out.state, np.array([0, 1, 3]))
    assert [s.shape for s in step.state] == [s.shape for s in out.state]
    assert step.reward.dtype == step.value.dtype == step.policy_logits.dtype == np.float32

    observations = random_observations(rng, 2 * 6).reshape(2, 6, *ATARI_SHAPE)   # [B, K+1, ...]
    inputs = smoke_net.preprocess(observations)
    assert inputs.dtype == tf.float32 and inputs.shape == (2, 6, *ATARI_SHAPE)
    np.testing.assert_allclose(inputs.numpy(), observations / 255.0, rtol=1e-6)
    latent = smoke_net.represent(inputs[:, 0], training=True)
    value_logits, policy_logits = smoke_net.predict(latent, training=True)
    assert value_logits.shape == (2, 2 * S + 1) and policy_logits.shape == (2, 4)
    latent, reward_logits, lstm_state = smoke_net.dynamics(
        latent, tf.constant([1, 2], tf.int32), smoke_net.initial_lstm_state(2), training=True)
    assert latent.shape == (2, 6, 6, 16) and reward_logits.shape == (2, 2 * S + 1)
    assert [s.shape for s in lstm_state] == [(2, 32), (2, 32)]
    projection = smoke_net.project(latent, training=True)
    assert projection.shape == (2, 64)
    assert smoke_net.predict_projection(projection, training=True).shape == (2, 64)


def test_every_trainable_variable_gets_a_gradient_from_an_unroll(smoke_net):
    rng = np.random.default_rng(2)
    inputs = smoke_net.preprocess(random_observations(rng, 2))
    with tf.GradientTape() as tape:
        latent = smoke_net.represent(inputs, training=True)
        lstm_state = smoke_net.initial_lstm_state(2)
        loss = 0.0
        for action in (0, 3):
            latent, reward_logits, lstm_state = smoke_net.dynamics(
                latent, tf.fill([2], action), lstm_state, training=True)
            value_logits, policy_logits = smoke_net.predict(latent, training=True)
            projection = smoke_net.predict_projection(smoke_net.project(latent, training=True),
                                                      training=True)
            loss += tf.reduce_sum(reward_logits) + tf.reduce_sum(value_logits) \
                + tf.reduce_sum(policy_logits) + tf.reduce_sum(projection)
    gradients = tape.gradient(loss, smoke_net.trainable_variables)
    missing = [v.path for v, g in zip(smoke_net.trainable_variables, gradients) if g is None]
    assert not missing


def test_mlp_network_for_vector_observations():
    config = cfg.classic()
    net = EfficientZeroNet(config, (4,), 2)
    assert net.latent_shape == (config.mlp_state_size,)
    observations = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = net.initial_inference(observations)
    assert [s.shape for s in out.state] == [(5, 64), (5, 64), (5, 64), (5,), (5,)]
    assert np.abs(out.state[0]).max() <= 1.0                      # tanh-bounded latent
    step = net.recurrent_inference(out.state, np.array([0, 1, 1, 0, 1]))
    assert step.reward.shape == step.value.shape == (5,) and step.policy_logits.shape == (5, 2)
    counts = net.parameter_counts()
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_group_norm_variant_builds_and_runs():
    net = EfficientZeroNet(smoke_config(normalization="group"), ATARI_SHAPE, 4)
    randomize(net, seed=3)
    rng = np.random.default_rng(0)
    out = net.initial_inference(random_observations(rng, 2))
    step = net.recurrent_inference(out.state, np.array([2, 3]))
    assert np.isfinite(step.value).all() and np.isfinite(step.reward).all()
    assert not any("moving_mean" in v.path for v in net.variables)
    latent = net.represent(net.preprocess(random_observations(rng, 2)), training=True)
    assert latent.shape == (2, 6, 6, 16)


def test_value_prefix_off_uses_a_plain_reward_head():
    net = EfficientZeroNet(smoke_config(value_prefix=False), ATARI_SHAPE, 4)
    randomize(net, seed=4)
    assert net.initial_lstm_state(3) == ()
    out = net.initial_inference(random_observations(np.random.default_rng(0), 3))
    assert len(out.state) == 1 and out.state[0].shape == (3, 6, 6, 16)
    step = net.recurrent_inference(out.state, np.array([0, 1, 2]))
    latent, reward_logits, lstm_state = net.dynamics(out.state[0], tf.constant([0, 1, 2]), (),
                                                     training=False)
    assert lstm_state == ()
    np.testing.assert_allclose(step.reward, logits_to_scalar(reward_logits, S).numpy(), rtol=1e-4,
                               atol=1e-5)
    assert np.abs(step.reward).max() > 0


# --- behaviour ------------------------------------------------------------------------------------

def test_zero_initialised_heads_predict_zero_value_and_reward_and_uniform_policy(smoke_net):
    out = smoke_net.initial_inference(random_observations(np.random.default_rng(5), 2))
    step = smoke_net.recurrent_inference(out.state, np.array([1, 2]))
    for output in (out, step):
        np.testing.assert_allclose(output.value, 0.0, atol=1e-5)
        np.testing.assert_allclose(output.reward, 0.0, atol=1e-5)
        np.testing.assert_array_equal(output.policy_logits, 0.0)     # softmax is uniform


def test_value_prefix_reward_is_the_prefix_difference_and_resets(random_smoke_net):
    net, horizon = random_smoke_net, cfg.smoke().lstm_horizon_len
    rng = np.random.default_rng(6)
    out = net.initial_inference(random_observations(rng, 2))
    actions = rng.integers(0, 4, size=(7, 2)).astype(np.int32)
    state, latent, lstm_state, parent_prefix = (out.state, out.state[0],
                                                net.initial_lstm_state(2), 0.0)
    for k in range(1, 8):
        step = net.recurrent_inference(state, actions[k - 1])
        latent, logits, lstm_state = net.dynamics(latent, actions[k - 1], lstm_state,
                                                  training=False)
        prefix = logits_to_scalar(logits, S).numpy()
        np.testing.assert_allclose(step.reward, prefix - parent_prefix, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(step.state[0], latent.numpy(), rtol=1e-4, atol=1e-5)
        if k % horizon == 0:                          # the trainer's reset rule
            lstm_state, parent_prefix = net.initial_lstm_state(2), 0.0
            np.testing.assert_array_equal(step.state[1], 0.0)
            np.testing.assert_array_equal(step.state[2], 0.0)
            np.testing.assert_array_equal(step.state[3], 0.0)
        else:
            parent_prefix = prefix
            np.testing.assert_allclose(step.state[3], prefix, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(step.state[4], k % horizon)
        assert np.abs(step.reward).max() > 0
        state = step.state


def test_weights_round_trip_including_moving_statistics(random_smoke_net):
    net = random_smoke_net
    assert any("moving_variance" in v.path for v in net.variables)
    assert len(net.get_weights()) > len(net.trainable_variables)
    copy = EfficientZeroNet(cfg.smoke(), ATARI_SHAPE, 4)
    copy.set_weights(net.get_weights())
    for mine, theirs in zip(net.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    observations = random_observations(np.random.default_rng(7), 3)
    a, b = net.initial_inference(observations), copy.initial_inference(observations)
    for x, y in zip(a.state + (a.value, a.policy_logits), b.state + (b.value, b.policy_logits)):
        np.testing.assert_array_equal(x, y)
    actions = np.array([3, 0, 1])
    a, b = net.recurrent_inference(a.state, actions), copy.recurrent_inference(b.state, actions)
    np.testing.assert_array_equal(a.reward, b.reward)
    np.testing.assert_array_equal(a.value, b.value)
    with pytest.raises(ValueError):
        copy.set_weights(net.get_weights()[:-1])


def test_no_retracing_across_batch_sizes_and_calls(smoke_net):
    rng = np.random.default_rng(8)
    for batch in (1, 4, 2, 4):
        out = smoke_net.initial_inference(random_observations(rng, batch))
        for _ in range(2):
            out = smoke_net.recurrent_inference(out.state, rng.integers(0, 4, size=batch))
        smoke_net.initial_inference_sequence(random_observations(rng, batch * (3 + batch),
                                                                 (96, 96, 3))
                                             .reshape(batch, 3 + batch, 96, 96, 3))
    assert smoke_net.trace_counts == {"initial_inference": 1, "initial_inference_sequence": 1,
                                      "recurrent_inference": 1}


def test_search_calls_compute_what_the_traced_functions_compute(random_smoke_net):
    """`compiled_call` runs the same graph as the tf.function it wraps, and converts arrays of
    another dtype (int64 actions, float64 states) to the signature's dtypes."""
    net = random_smoke_net
    observations = random_observations(np.random.default_rng(10), 3)
    called = net.initial_inference(observations)
    state, reward, value, logits = net._initial(observations)
    np.testing.assert_array_equal(called.value, value.numpy())
    np.testing.assert_array_equal(called.policy_logits, logits.numpy())
    actions = np.array([2, 0, 3], np.int64)
    wide_state = tuple(s.astype(np.float64) if s.dtype == np.float32 else s for s in called.state)
    stepped = net.recurrent_inference(wide_state, actions)
    state, reward, value, logits = net._recurrent(called.state, actions.astype(np.int32))
    np.testing.assert_array_equal(stepped.reward, reward.numpy())
    np.testing.assert_array_equal(stepped.value, value.numpy())
    for mine, theirs in zip(stepped.state, state):
        assert mine.dtype == theirs.dtype.as_numpy_dtype
        np.testing.assert_array_equal(mine, theirs.numpy())
    # The public call, standing in where TensorFlow lacks the private one, gives the same numbers.
    public = compiled_call(net._recurrent, private_api=False)(wide_state, actions)
    for mine, theirs in zip(tf.nest.flatten(public),
                            tf.nest.flatten((state, reward, value, logits))):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_stacking_in_the_graph_equals_the_frame_stacker(random_smoke_net):
    rng = np.random.default_rng(9)
    frames = random_observations(rng, 2 * 7, (96, 96, 3)).reshape(2, 7, 96, 96, 3)   # [N, F, ...]
    stacked = stack_frames(frames, 4).numpy()                                      # [N, 4, ...]
    assert stacked.shape == (2, 4, 96, 96, 12)
    for n in range(2):
        stacker = FrameStacker(1, (96, 96, 3), 4, np.uint8)
        stacker.reset(0, frames[n, 0])
        for p in range(4):
            for s in range(1, 4):
                stacker.push(0, frames[n, p + s])
            np.testing.assert_array_equal(stacked[n, p], stacker.observations()[0])
            stacker.reset(0, frames[n, p + 1])
    direct = random_smoke_net.initial_inference(stacked.reshape(8, 96, 96, 12))
    sequence = random_smoke_net.initial_inference_sequence(frames)
    for a, b in zip(direct, sequence):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_mixed_precision_keeps_logits_and_search_outputs_float32():
    import keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        net = EfficientZeroNet(cfg.smoke(), ATARI_SHAPE, 4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = net.initial_inference(random_observations(np.random.default_rng(9), 2))
    step = net.recurrent_inference(out.state, np.array([0, 1]))
    assert all(s.dtype in (np.float32, np.int32) for s in step.state)
    latent = net.represent(net.preprocess(random_observations(np.random.default_rng(9), 2)),
                           training=True)
    assert latent.dtype == tf.float16
    value_logits, policy_logits = net.predict(latent, training=True)
    assert value_logits.dtype == policy_logits.dtype == tf.float32
    assert net.project(latent, training=True).dtype == tf.float32
    np.testing.assert_allclose(step.value, 0.0, atol=1e-3)


def test_fused_batch_norm_statistics_follow_pytorch():
    from networks import NORM_EPSILON, NORM_MOMENTUM, BatchNorm
    x = np.random.default_rng(10).normal(3.0, 2.0, size=(4, 3, 3, 5)).astype(np.float32)
    norm = BatchNorm()
    y = norm(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    mean, unbiased = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)
    np.testing.assert_allclose(norm.moving_mean.numpy(), (1 - NORM_MOMENTUM) * mean, rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               NORM_MOMENTUM + (1 - NORM_MOMENTUM) * unbiased, rtol=1e-5)
    flat = x.reshape(-1, 5)[:6]
    expected = ((flat - norm.moving_mean.numpy())
                / np.sqrt(norm.moving_variance.numpy() + NORM_EPSILON))
    np.testing.assert_allclose(norm(flat, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)


# --- initialisation (PyTorch's defaults, as the official code) ------------------------------------

def test_dynamics_tell_every_pair_of_actions_apart_at_initialisation():
    """The action plane a/A goes through conv1x1 -> LayerNorm over the plane. With a zero conv bias
    (Keras' default) every a > 0 gives the same normalised embedding up to LayerNorm's epsilon, so
    g(s, 1), g(s, 2) and g(s, 3) start equal; PyTorch's uniform bias separates them."""
    tf.keras.utils.set_random_seed(0)
    net = EfficientZeroNet(cfg.smoke(), ATARI_SHAPE, 4)
    latent = net.represent(net.preprocess(random_observations(np.random.default_rng(0), 2)),
                           training=False)

    def smallest_gap():
        nexts = [net.transition(latent, tf.fill([2], a), training=False).numpy() for a in range(4)]
        return min(np.abs(nexts[a] - nexts[b]).max() for a in range(4) for b in range(a + 1, 4))

    initialised = smallest_gap()
    bias = net.transition.action_conv.bias
    bias.assign(tf.zeros_like(bias))
    with_zero_bias = smallest_gap()
    assert with_zero_bias < 2e-3
    assert initialised > 0.01 and initialised > 10 * with_zero_bias, (initialised, with_zero_bias)


def test_layers_start_as_pytorch_initialises_them():
    """Kernels and biases uniform in ±1/sqrt(fan_in) (last head layers zero), LSTM weights in
    ±1/sqrt(hidden) with two summed biases: checked by bounds and by the spread of the draws."""
    import keras

    config = smoke_config(lstm_hidden_size=32)
    tf.keras.utils.set_random_seed(0)
    net = EfficientZeroNet(config, ATARI_SHAPE, 4)
    checked = 0
    for part in ("representation", "dynamics", "prediction", "projection"):
        for block in net._parts[part]:
            for layer in block._flatten_layers(include_self=True, recursive=True):
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                    kernel = layer.kernel.numpy()
                    if isinstance(layer.kernel_initializer, keras.initializers.Zeros):
                        assert not kernel.any() and not layer.bias.numpy().any()
                        continue
                    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
                    assert np.abs(kernel).max() <= bound
                    if kernel.size >= 256:   # uniform(±b): standard deviation b / sqrt(3)
                        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
                    if layer.use_bias:
                        assert np.abs(layer.bias.numpy()).max() <= bound
                        assert np.abs(layer.bias.numpy()).max() > 0.2 * bound
                    checked += 1
                elif isinstance(layer, keras.layers.LSTMCell):
                    bound = 1 / np.sqrt(32)
                    assert np.abs(layer.kernel.numpy()).max() <= bound
                    assert np.abs(layer.recurrent_kernel.numpy()).max() <= bound
                    assert np.abs(layer.bias.numpy()).max() <= 2 * bound
                    checked += 1
    assert checked > 20


def test_the_state_gradient_scale_halves_everything_an_unrolled_state_sends_back():
    """The official hook on the unrolled state: the gradient reaching g from that step's own heads
    is halved, not only the part that flows through the next dynamics step."""
    net = EfficientZeroNet(cfg.classic(), (4,), 2)
    observations = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    actions = tf.constant([0, 1] * 4)

    start = net.get_weights()            # with batch_renorm the moving statistics shape the output

    def gradients(scale):
        net.set_weights(start)
        with tf.GradientTape() as tape:
            latent = net.represent(observations, training=True)
            latent, reward_logits, _ = net.dynamics(latent, actions, net.initial_lstm_state(8),
                                                    training=True, state_gradient_scale=scale)
            value_logits, policy_logits = net.predict(latent, training=True)
            loss = tf.reduce_sum(value_logits * tf.range(61, dtype=tf.float32)) \
                + tf.reduce_sum(policy_logits * tf.constant([1.0, -2.0])) \
                + tf.reduce_sum(reward_logits * tf.range(61, dtype=tf.float32)) \
                + tf.reduce_sum(latent ** 2)
        variables = net.transition.trainable_weights + net.prediction.trainable_weights
        return ([g.numpy() for g in tape.gradient(loss, variables)],
                len(net.transition.trainable_weights))

    full, count = gradients(1.0)
    half, _ = gradients(0.5)
    for f, h in zip(full[:count], half[:count]):               # dynamics: everything halved
        np.testing.assert_allclose(h, 0.5 * f, rtol=1e-5, atol=1e-7)
    for f, h in zip(full[count:], half[count:]):               # the heads themselves: unchanged
        np.testing.assert_allclose(h, f, rtol=1e-6, atol=1e-7)


def test_batch_renormalization_trains_on_what_inference_computes():
    """The renorm training forward is (x − μ) / σ · γ + β with the moving statistics, the inference
    function, however far the batch is from them, while its gradient is plain BatchNorm's scaled by
    r = σ_B / σ."""
    from networks import NORM_EPSILON, BatchNorm

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 2.0, size=(64, 8)).astype(np.float32))
    moving_mean = rng.normal(3.0, 0.5, size=8).astype(np.float32)
    moving_variance = rng.uniform(2.0, 6.0, size=8).astype(np.float32)

    def layer(renorm, mean=moving_mean, variance=moving_variance):
        norm = BatchNorm(renorm=renorm)
        norm.build((None, 8))
        norm.gamma.assign(rng.uniform(0.5, 1.5, 8).astype(np.float32))
        norm.beta.assign(rng.normal(size=8).astype(np.float32))
        norm.moving_mean.assign(mean)
        norm.moving_variance.assign(variance)
        return norm

    renorm = layer(True)
    gamma, beta = renorm.gamma.numpy(), renorm.beta.numpy()
    inference = (x.numpy() - moving_mean) / np.sqrt(moving_variance + NORM_EPSILON) * gamma + beta
    np.testing.assert_allclose(renorm(x, training=False).numpy(), inference, rtol=1e-4, atol=1e-4)
    weights = tf.constant(rng.normal(size=(64, 8)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        renorm_out = renorm(x, training=True)
        plain = layer(False)
        plain.gamma.assign(gamma)
        plain_out = plain(x, training=True)
        renorm_loss = tf.reduce_sum(renorm_out * weights)
        plain_loss = tf.reduce_sum(plain_out * weights)
    np.testing.assert_allclose(renorm_out.numpy(), inference, rtol=1e-4, atol=1e-4)
    assert np.abs(plain_out.numpy() - inference).max() > 0.1          # plain BN trains elsewhere
    r = np.sqrt(x.numpy().var(0) + NORM_EPSILON) / np.sqrt(moving_variance + NORM_EPSILON)
    np.testing.assert_allclose(tape.gradient(renorm_loss, x).numpy(),
                               tape.gradient(plain_loss, x).numpy() * r, rtol=1e-3, atol=1e-5)
    # Far from the moving statistics too (no clipping): still the inference function.
    far = layer(True, mean=moving_mean - 400.0, variance=np.full(8, 400.0, np.float32))
    gamma, beta = far.gamma.numpy(), far.beta.numpy()
    expected = (x.numpy() - (moving_mean - 400.0)) / np.sqrt(400.0 + NORM_EPSILON) * gamma + beta
    np.testing.assert_allclose(far(x, training=True).numpy(), expected, rtol=1e-4, atol=1e-3)


def test_minatar_representation_keeps_the_grid_and_dynamics_tell_actions_apart():
    """downsample off: conv3x3 s1 -> C, norm, ReLU,
    then num_blocks residual blocks on the 10x10 grid."""
    tf.keras.utils.set_random_seed(0)
    config = dataclasses.replace(cfg.minatar(), num_channels=8,        # reduced_channels 8
                                 action_encoding="scalar")
    net = EfficientZeroNet(config, (10, 10, 4), 3)
    assert net.latent_shape == (10, 10, 8)
    stem = net.representation.stem
    assert stem.kernel.shape == (3, 3, 4, 8) and stem.strides == (1, 1) and not stem.use_bias
    assert len(net.representation.tower) == config.num_blocks
    assert not hasattr(net.representation, "pool")
    observations = np.zeros((2, 10, 10, 4), np.uint8)
    observations[0, 3, 4, 1] = observations[1, 7, 2, 0] = 255
    latent = net.represent(net.preprocess(observations), training=False)
    nexts = [net.transition(latent, tf.fill([2], a), training=False).numpy() for a in range(3)]
    assert all(next_.shape == (2, 10, 10, 8) for next_ in nexts)
    assert min(np.abs(nexts[a] - nexts[b]).max() for a in range(3) for b in range(a + 1, 3)) > 0.01
    output = net.initial_inference(observations)
    assert output.policy_logits.shape == (2, 3)


def test_one_hot_action_planes_give_each_action_its_own_embedding():
    """action_encoding='one_hot': action a is plane a of A, so the conv1x1's input channel a alone
    carries it: zeroing that channel's weights changes g(s, a) and no other action's next state."""
    tf.keras.utils.set_random_seed(0)
    config = dataclasses.replace(cfg.minatar(), num_channels=8, action_encoding="one_hot")
    net = EfficientZeroNet(config, (10, 10, 4), 3)
    kernel = net.transition.action_conv.kernel
    assert kernel.shape == (1, 1, 3, config.reduced_channels)
    latent = net.represent(net.preprocess(random_observations(np.random.default_rng(3), 2,
                                                              (10, 10, 4))), training=False)

    def nexts():
        return [net.transition(latent, tf.fill([2], a), training=False).numpy() for a in range(3)]

    before = nexts()
    assert min(np.abs(before[a] - before[b]).max()
               for a in range(3) for b in range(a + 1, 3)) > 0.01
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0, 1]], tf.zeros([1, kernel.shape[-1]])))
    after = nexts()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[2], before[2])
    assert np.abs(after[1] - before[1]).max() > 0.01


@pytest.mark.parametrize("global_channels", [0, 2])
def test_only_the_global_layer_lets_one_step_of_g_reach_across_the_grid(global_channels):
    """minatar's g on a 10x10 grid: a conv3x3 and one residual block reach 3 cells, so changing the
    latent in cell (0, 0) leaves g's next state in cell (9, 9) exactly as it was; with
    `dynamics_global_channels` the GlobalLayer's Dense carries it there. The layer's weights:
    conv1x1 C -> G, norm, Dense (10·10·G)^2 + bias, conv1x1 G -> C, norm."""
    tf.keras.utils.set_random_seed(0)
    config = dataclasses.replace(cfg.minatar(), num_channels=8,
                                 dynamics_global_channels=global_channels)
    net = EfficientZeroNet(config, (10, 10, 4), 3)
    latent = net.represent(net.preprocess(random_observations(np.random.default_rng(3), 2,
                                                              (10, 10, 4))), training=False)
    moved = latent.numpy().copy()
    moved[:, 0, 0, :] += 1.0
    nexts = [net.transition(state, tf.constant([1, 2]), training=False).numpy()
             for state in (latent, tf.constant(moved))]
    far = np.abs(nexts[1][:, 9, 9] - nexts[0][:, 9, 9]).max()
    if global_channels:
        assert far > 1e-3
        layer = net.transition.tower[-1]
        assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == (
            8 * 2 + 2 * 2 + (200 * 200 + 200) + 2 * 8 + 2 * 8)
    else:
        assert far == 0.0
        assert np.abs(nexts[1][:, 3, 3] - nexts[0][:, 3, 3]).max() > 1e-3    # 3 cells: reached


def test_minatar_parameter_counts_match_a_count_by_hand():
    """The minatar network (C=16, reduced 4, heads (32,), LSTM 64, 61 bins, projections 128/128/64,
    3 actions as one-hot planes, 4 input channels, 10x10 grid), layer by layer; a norm layer has 2
    per channel."""
    conv3 = lambda c_in, c_out: 9 * c_in * c_out                         # noqa: E731, no bias
    dense = lambda n_in, n_out: n_in * n_out + n_out                     # noqa: E731
    block = 2 * conv3(16, 16) + 2 * 2 * 16                               # residual block
    reduce = 16 * 4 + 4 + 2 * 4                                          # conv1x1 + bias, norm
    head = lambda n_in, n_out: dense(n_in, 32) + 2 * 32 + dense(32, n_out)  # noqa: E731
    representation = conv3(4, 16) + 2 * 16 + block
    action_embedding = (3 * 4 + 4) + 2 * (10 * 10 * 4)                   # conv1x1, LN [H,W,C]
    transition = action_embedding + conv3(16 + 4, 16) + 2 * 16 + block
    lstm = 400 * 4 * 64 + 64 * 4 * 64 + 4 * 64                           # Keras: one bias vector
    reward = reduce + lstm + 2 * 64 + head(64, 61)
    prediction = block + reduce + head(400, 61) + reduce + head(400, 3)
    projection = (dense(1600, 128) + dense(128, 128) + dense(128, 128) + 3 * 2 * 128
                  + dense(128, 64) + 2 * 64 + dense(64, 128))
    expected = {"representation": representation, "dynamics": transition + reward,
                "prediction": prediction, "projection": projection}
    expected["total"] = sum(expected.values())
    assert expected == {"representation": 5_280, "dynamics": 131_801, "prediction": 32_728,
                        "projection": 255_424, "total": 425_233}
    assert EfficientZeroNet(cfg.minatar(), (10, 10, 4), 3).parameter_counts() == expected


@pytest.mark.parametrize("preset, shape", [("smoke", ATARI_SHAPE), ("classic", (4,))])
def test_xla_inference_computes_what_the_graph_computes(preset, shape):
    """`xla_inference` compiles the three search-side functions with XLA: the same outputs up to
    float rounding (fused kernels sum in another order), and one trace whatever the batch size."""
    config = dataclasses.replace(cfg.get_config(preset), xla_inference=False)
    graph = EfficientZeroNet(config, shape, 4)
    randomize(graph, seed=11)
    xla = EfficientZeroNet(dataclasses.replace(config, xla_inference=True), shape, 4)
    xla.set_weights(graph.get_weights())
    rng = np.random.default_rng(12)

    def observations(batch):
        if len(shape) == 3:
            return random_observations(rng, batch, shape)
        return rng.standard_normal((batch, *shape)).astype(np.float32)

    def assert_close(mine, theirs):
        for a, b in zip(tf.nest.flatten(mine), tf.nest.flatten(theirs)):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    for batch in (3, 5):
        inputs, actions = observations(batch), rng.integers(0, 4, size=batch)
        root_graph, root_xla = graph.initial_inference(inputs), xla.initial_inference(inputs)
        assert_close(root_xla, root_graph)
        assert_close(xla.recurrent_inference(root_graph.state, actions),
                     graph.recurrent_inference(root_graph.state, actions))
    frames = observations(2 * 3).reshape(2, 3, *shape)           # frame_stack 1 for classic
    if len(shape) == 3:
        frames = random_observations(rng, 2 * 6, (*shape[:2], 3)).reshape(2, 6, *shape[:2], 3)
    assert_close(xla.initial_inference_sequence(frames), graph.initial_inference_sequence(frames))
    assert xla.trace_counts == {"initial_inference": 1, "initial_inference_sequence": 1,
                                "recurrent_inference": 1}
    for net, compiled in ((graph, False), (xla, True)):
        for function in (net._initial, net._initial_sequence, net._recurrent):
            attributes = function.get_concrete_function().function_def.attr
            assert attributes["_XlaMustCompile"].b == compiled


def test_min_max_scale_spans_zero_to_one_per_sample_and_zeroes_a_constant_latent():
    latent = tf.constant([[[[1.0], [3.0]], [[2.0], [5.0]]],
                          [[[4.0], [4.0]], [[4.0], [4.0]]]])                # [2, 2, 2, 1]
    scaled = min_max_scale(latent).numpy()
    np.testing.assert_allclose(scaled[0, ..., 0], [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(scaled[1], np.zeros((2, 2, 1)))


@pytest.mark.parametrize("preset, shape, num_actions", [("smoke", ATARI_SHAPE, 4),
                                                        ("classic", (4,), 2)])
def test_state_norm_scales_the_root_and_every_step_of_g_to_span_zero_to_one(preset, shape,
                                                                             num_actions):
    config = dataclasses.replace(cfg.get_config(preset), state_norm=True)
    net = EfficientZeroNet(config, shape, num_actions)
    randomize(net, seed=5)
    plain = EfficientZeroNet(dataclasses.replace(config, state_norm=False), shape, num_actions)
    plain.set_weights(net.get_weights())
    rng = np.random.default_rng(0)
    observations = (random_observations(rng, 3, shape) if len(shape) == 3
                    else rng.standard_normal((3, *shape)).astype(np.float32))
    actions = [rng.integers(0, num_actions, 3) for _ in range(3)]
    output = net.initial_inference(observations)
    latents = [output.state[0]]
    for step_actions in actions:
        output = net.recurrent_inference(output.state, step_actions)
        latents.append(output.state[0])
    for latent in latents:
        flat = latent.reshape(3, -1)
        np.testing.assert_allclose(flat.min(axis=1), 0.0, atol=1e-6)
        np.testing.assert_allclose(flat.max(axis=1), 1.0, atol=1e-6)
    # The scaling sits after h and after each step of g: the unscaled network's outputs, scaled.
    inputs = plain.preprocess(observations)
    np.testing.assert_allclose(latents[0], min_max_scale(plain.represent(inputs, False)),
                               atol=1e-6)
    for k, step_actions in enumerate(actions):
        unscaled, _, _ = plain.dynamics(latents[k], step_actions, plain.initial_lstm_state(3),
                                        training=False)
        np.testing.assert_allclose(latents[k + 1], min_max_scale(unscaled), atol=1e-5)


# --- the continuous-control StateNet (official ez/agents/ez_dmc_state.py) -------------------------

def dmc_state_config():
    """The official dmc_state sizes (ez/config/exp/dmc_state.yaml)."""
    return dataclasses.replace(cfg.smoke(), mlp_state_size=128, residual_hidden_size=256,
                               num_blocks=2, action_embedding_size=64,
                               head_hidden_sizes=(256, 256), projection_hidden_size=512,
                               projection_output_size=128, prediction_head_hidden_size=512,
                               state_support_bins=51)


def test_state_net_has_the_official_parameter_count():
    from networks import StateNet

    observation, action = 15, 4                                   # hopper, the YAML's game
    counts = StateNet(dmc_state_config(), (observation,), action).parameter_counts()
    dense = lambda n_in, n_out: n_in * n_out + n_out             # noqa: E731
    norm = lambda n: 2 * n                                      # noqa: E731 LayerNorm, BatchNorm
    block = lambda width, hidden: norm(width) + dense(width, hidden) + dense(hidden, width)  # noqa: E731
    head_mlp = lambda out: (dense(128, 256) + norm(256) + dense(256, 256) + norm(256)  # noqa: E731
                            + dense(256, out))
    expected = {
        "representation": dense(observation, 128) + norm(128) + 2 * block(128, 256),
        "dynamics": (dense(action, 64) + norm(64) + norm(192) + dense(192, 256) + dense(256, 128)
                     + 2 * block(128, 256)),
        "reward": block(128, 128) + norm(128) + head_mlp(51),
        "value": block(128, 128) + norm(128) + head_mlp(51),
        "policy": block(128, 128) + norm(128) + head_mlp(2 * action),
        "projection": dense(128, 512) + norm(512) + dense(512, 512) + norm(512) + dense(512, 128)
                      + norm(128),
        "projection_head": dense(128, 512) + norm(512) + dense(512, 128)}
    assert counts == expected
    assert sum(counts.values()) == 1_307_950                   # the official network: about 1.31 M


def test_state_norm_scales_the_state_net_of_continuous_control():
    from networks import StateNet

    config = dataclasses.replace(dmc_state_config(), state_norm=True)
    net = StateNet(config, (8,), 2)
    rng = np.random.default_rng(0)
    latent = net.represent(rng.standard_normal((4, 8)).astype(np.float32), training=False)
    next_latent, _, _ = net.dynamics(latent, rng.uniform(-1, 1, (4, 2)).astype(np.float32), (),
                                     training=False)
    for state in (latent.numpy(), next_latent.numpy()):
        np.testing.assert_allclose(state.min(axis=1), 0.0, atol=1e-6)
        np.testing.assert_allclose(state.max(axis=1), 1.0, atol=1e-6)


def test_a_fresh_policy_head_gives_the_official_initial_gaussian():
    from networks import StateNet, policy_parameters

    config = dmc_state_config()
    net = StateNet(config, (8,), 2)
    latent = net.representation(tf.random.normal((5, 8)))
    mean, std = policy_parameters(net.policy_head(latent), config)
    np.testing.assert_allclose(mean, np.zeros((5, 2)))
    np.testing.assert_allclose(std, np.full((5, 2), np.log1p(np.e) + 0.1), rtol=1e-6)
    np.testing.assert_array_equal(net.reward_head(latent), np.zeros((5, 51)))
    assert np.abs(net.value_head(latent).numpy()).max() > 0    # the value head is not zeroed
    raw = tf.constant([[40.0, -3.0, -50.0, 2.0]])
    mean, std = policy_parameters(raw, config)
    np.testing.assert_allclose(mean, [[5 * np.tanh(8.0), 5 * np.tanh(-0.6)]], rtol=1e-6)
    np.testing.assert_allclose(std, [[np.log1p(np.exp(-49.0)) + 0.1, np.log1p(np.exp(3.0)) + 0.1]],
                               rtol=1e-6)


def test_the_squashed_gaussian_density_is_the_official_formula():
    from networks import squashed_gaussian

    mean = np.array([[0.0, 1.5, -4.0]], np.float32)
    std = np.array([[1.4133, 0.3, 2.0]], np.float32)
    action = np.array([[0.999, -0.5, -0.999]], np.float32)
    log_prob = squashed_gaussian(mean, std).log_prob(action).numpy()
    x = np.arctanh(action.astype(np.float64))
    normal = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    jacobian = 2 * (np.log(2) - x - np.log1p(np.exp(-2 * x)))      # official utils/distribution.py
    np.testing.assert_allclose(log_prob, normal - jacobian, rtol=2e-4)


def test_running_mean_std_moves_only_in_training_calls_by_the_parallel_moments_rule():
    from networks import RunningMeanStd

    layer = RunningMeanStd()
    rng = np.random.default_rng(0)
    first, second = rng.normal(3, 2, (64, 4)), rng.normal(-1, 0.5, (32, 4))
    frozen = layer(tf.constant(first, tf.float32)).numpy()
    np.testing.assert_allclose(frozen, first / np.sqrt(1 + 1e-5), rtol=1e-6)
    mean, var, count = np.zeros(4), np.ones(4), 1e3
    for batch in (first, second):
        out = layer(tf.constant(batch, tf.float32), training=True).numpy()
        total = count + len(batch)
        delta = batch.mean(0) - mean
        mean, var = (mean + delta * len(batch) / total,
                     (var * count + batch.var(0) * len(batch)
                      + delta ** 2 * count * len(batch) / total) / total)
        count = total
        np.testing.assert_allclose(out, (batch - mean) / np.sqrt(var + 1e-5), rtol=1e-5,
                                   atol=1e-5)
    np.testing.assert_allclose(layer.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(layer.var.numpy(), var, rtol=1e-5)
    assert float(layer.count.numpy()) == 1e3 + 96


def official_dmc_two_hot(x: np.ndarray, bound: float, bins: int) -> np.ndarray:
    """The official DMC DiscreteSupport.scalar_to_vector (ez/utils/format.py), in NumPy."""
    h = lambda v: np.sign(v) * (np.sqrt(np.abs(v) + 1) - 1) + 0.001 * v    # noqa: E731
    low, high = h(-bound), h(bound)
    scale = (high - low) / (bins - 1)
    position = np.clip(h(x) / scale, low / scale, high / scale - 1e-5) - low / scale
    floor, ceil = np.floor(position), np.ceil(position)
    target = np.zeros(x.shape + (bins,))
    rows = np.arange(len(x))
    target[rows, ceil.astype(int)] = position - floor
    target[rows, floor.astype(int)] = 1 - (position - floor)
    return target


@pytest.mark.parametrize("bound, values", [(299.0, [0.0, 0.37, 5.0, 123.4, 298.9, 299.0]),
                                           (2.0, [-2.0, -0.3, 0.0, 0.01, 1.2, 2.0])])
def test_h_space_support_is_the_official_dmc_support_and_decodes_its_targets(bound, values):
    from networks import h_space_bins, h_space_logits_to_scalar, scalar_to_h_space_two_hot

    bins = 51
    points = h_space_bins(bound, bins).numpy()
    top = np.sqrt(bound + 1) - 1 + 0.001 * bound
    np.testing.assert_allclose(points[[0, -1]], [-top, top], rtol=1e-6)
    np.testing.assert_allclose(np.diff(points), 2 * top / 50, rtol=1e-4)   # 0.6648 for ±299
    x = np.array(values, np.float32)
    two_hot = scalar_to_h_space_two_hot(x, bound, bins).numpy()
    np.testing.assert_allclose(two_hot, official_dmc_two_hot(x.astype(np.float64), bound, bins),
                               atol=2e-5)
    decoded = h_space_logits_to_scalar(np.log(np.maximum(two_hot, 1e-30)), bound, bins).numpy()
    np.testing.assert_allclose(decoded, x, rtol=1e-4, atol=1e-4)
    beyond = scalar_to_h_space_two_hot(np.array([10 * bound, -10 * bound]), bound, bins).numpy()
    np.testing.assert_array_equal(beyond[:, [0, -1]], [[0, 1], [1, 0]])    # saturates
