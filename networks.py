"""The EfficientZero V2 networks in Keras: representation h, dynamics g, prediction f, SimSiam.

Implements the networks of EfficientZero V2 (Wang et al. 2024, Appendix "Network Architecture"; the
layer layout follows the official `ez/agents/models/base_model.py` and `ez/config/exp/atari.yaml`):

- h (representation): observation [B, 96, 96, 12] -> latent state [B, 6, 6, C], a residual stack
  with two stride-2 stages and two average pools; a small grid (MinAtar [B, 10, 10, C']) keeps its
  size (`downsample` off). Vector observations [B, D] -> flat latent [B, mlp_state_size].
- g (dynamics): (latent, action) -> next latent, plus the value-prefix head: an LSTM carried along
  the unroll that predicts the sum of rewards since its last reset (EfficientZero's "value prefix"),
  or a plain per-step reward head when `value_prefix` is off.
- f (prediction): latent -> value logits [B, N] and policy logits [B, A].
- SimSiam projection P1 and prediction head P2 for the temporal consistency loss (blog topic ②).

Shapes: `B` batch, `A` actions, `C` channels, `S` support_size, `N` = 2S/support_scale + 1 support
points; images are channels-last. Scalars (value, value prefix, reward) are categorical over the
points of [-S, S] spaced `support_scale` apart (Atari: the integers) after the invertible
transform h(x) = sign(x)(sqrt(|x| + 1) - 1) + εx (MuZero Appendix F); `scalar_to_two_hot` and
`logits_to_scalar` convert between the two. The last layer of every reward/value/policy head starts
at zero, so a fresh network predicts value 0, reward 0 and a uniform policy. Normalisation is
BatchNorm (a fused-kernel layer with PyTorch's moving-statistics rule) or, with
`normalization='group'`, GroupNorm.

The search uses `initial_inference` / `recurrent_inference` (NumPy in, NumPy out, scalars decoded,
one `tf.function` trace each, called through its concrete function: `compiled_call`; with
`xla_inference` XLA compiles each, once per batch size); reanalysis uses
`initial_inference_sequence`, which stacks a window of single replay frames into observations inside
the graph (`stack_frames`: the replay never builds the 3x larger stacked array on the host). The
trainer calls the building blocks `represent`, `dynamics`, `predict`, `project` and
`predict_projection` inside its own `tf.function`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from config import Config

# ε of the scalar transform h(x) (MuZero Appendix F; official `ez/utils/format.py`).
TRANSFORM_EPSILON = 0.001
# Normalisation layers use PyTorch's defaults, as the official code does: moving statistics updated
# with weight 0.1 on the new batch (Keras counts the other way: momentum 0.9), epsilon 1e-5.
NORM_MOMENTUM = 0.9
NORM_EPSILON = 1e-5
# The smallest range `min_max_scale` divides by: a constant latent becomes zeros, not NaN.
STATE_RANGE_FLOOR = 1e-5


def compiled_call(function, private_api: bool = True):
    """`function` (a `tf.function` with an input signature) as a callable that takes NumPy arrays
    (nested as the signature) and runs the traced graph directly. tf.function's own per-call
    handling costs far more than a small network's whole graph: CartPole's recurrent inference on 8
    states takes about 1.3 ms through the concrete function, of which the graph is 0.35-0.5 ms; the
    rest is binding the nested arguments to the signature, the gradient-tape checks and
    `tf.convert_to_tensor`. A search call is never recorded by a tape, so this converts each array
    with `tf.constant` (which casts to the signature's dtype) and calls the traced graph with its
    flat inputs and captured variables: the private `_inference_function.call_flat` of TensorFlow
    2.21 (pinned in requirements.txt). Where TensorFlow lacks that call, or with `private_api`
    false, it calls the concrete function through its public interface: slower per call, the same
    graph and numbers (`tests/test_networks.py` checks both paths). The graph is traced on the first
    call."""
    specs = tf.nest.flatten(function.input_signature)
    traced = []

    def call(*arguments):
        if not traced:
            concrete = function.get_concrete_function()
            graph = getattr(concrete, "_inference_function", None)
            if not (private_api and callable(getattr(graph, "call_flat", None))):
                graph = None
            traced.append((concrete, graph, list(concrete.captured_inputs),
                           concrete.structured_outputs))
        concrete, graph, captured, output_structure = traced[0]
        tensors = [tf.constant(value, spec.dtype)
                   for value, spec in zip(tf.nest.flatten(arguments), specs)]
        if graph is None:
            return concrete(*tf.nest.pack_sequence_as(function.input_signature, tensors))
        return tf.nest.pack_sequence_as(output_structure, graph.call_flat(*tensors, *captured))

    return call


class NetworkOutput(NamedTuple):
    state: tuple               # opaque search state, NumPy arrays with a leading batch dim
    reward: np.ndarray         # [B] float32 (zeros from initial_inference)
    value: np.ndarray          # [B] float32
    policy_logits: np.ndarray  # [B, A] float32


class GaussianOutput(NamedTuple):
    """StateNet's search-side output: a squashed-Gaussian policy instead of logits."""
    state: tuple               # (latent [B, S],) float32
    reward: np.ndarray         # [B] float32 (zeros from initial_inference)
    value: np.ndarray          # [B] float32
    policy_mean: np.ndarray    # [B, A] float32 μ of the Gaussian before the tanh
    policy_std: np.ndarray     # [B, A] float32 σ


def stack_frames(frames, frame_stack: int):
    """Single frames [N, F, *frame] -> the F - S + 1 stacked observations of each window,
    [N, F - S + 1, *frame[:-1], S * frame[-1]], frames oldest -> newest along the last axis (as
    envs.FrameStacker). S = frame_stack; any dtype; TF ops, so it runs inside a compiled graph."""
    frames = tf.convert_to_tensor(frames)
    positions = tf.shape(frames)[1] - frame_stack + 1
    return tf.concat([frames[:, s:s + positions] for s in range(frame_stack)], axis=-1)


# --- categorical scalars --------------------------------------------------------------------------

def scalar_transform(x):
    """h(x) = sign(x)(sqrt(|x| + 1) - 1) + εx, any shape, float32."""
    x = tf.convert_to_tensor(x, tf.float32)
    magnitude = tf.abs(x)
    # sqrt(a + 1) - 1 written as a / (sqrt(a + 1) + 1): no cancellation for small |x| in float32.
    return tf.sign(x) * (magnitude / (tf.sqrt(magnitude + 1.0) + 1.0)
                         + TRANSFORM_EPSILON * magnitude)


def inverse_scalar_transform(y):
    """The exact inverse of `scalar_transform`, any shape, float32.

    With d = sqrt(|x| + 1) - 1, |y| = d + ε d (d + 2), a quadratic in d whose positive root is
    d = 2|y| / ((1 + 2ε) + sqrt((1 + 2ε)^2 + 4ε|y|)) (the cancellation-free form);
    then |x| = d (d + 2).
    """
    y = tf.convert_to_tensor(y, tf.float32)
    magnitude = tf.abs(y)
    linear = 1.0 + 2.0 * TRANSFORM_EPSILON
    d = 2.0 * magnitude / (linear + tf.sqrt(linear * linear + 4.0 * TRANSFORM_EPSILON * magnitude))
    return tf.sign(y) * d * (d + 2.0)


def support_size_for(max_abs_value: float) -> int:
    """The smallest support_size whose support [-S, S] holds h(max_abs_value), e.g. 16 for
    CartPole's values (≤ 260) and 51 for Pendulum's (≥ −2,410 with γ = 0.997 over 200 steps)."""
    return max(1, math.ceil(float(scalar_transform(max_abs_value))))


def scalar_to_two_hot(x, support_size: int, scale: float = 1.0):
    """Transform x, clip to [-S, S], split between the two nearest support points (the multiples
    of `scale`): [...] -> [..., 2S/scale + 1]."""
    half = round(support_size / scale)
    y = tf.clip_by_value(scalar_transform(x), -float(support_size), float(support_size)) / scale
    low = tf.floor(y)
    upper_weight = (y - low)[..., None]
    index = tf.cast(low, tf.int32) + half
    depth = 2 * half + 1
    # At y = S the upper index is out of range; tf.one_hot gives zeros there, and its weight is 0.
    return (tf.one_hot(index, depth) * (1.0 - upper_weight)
            + tf.one_hot(index + 1, depth) * upper_weight)


def logits_to_scalar(logits, support_size: int, scale: float = 1.0):
    """Softmax expectation over the support's points (the multiples of `scale` in [-S, S]), then
    the inverse transform: [..., 2S/scale + 1] -> [...]."""
    half = round(support_size / scale)
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    support = tf.range(-half, half + 1, dtype=tf.float32) * scale
    return inverse_scalar_transform(tf.reduce_sum(probabilities * support, axis=-1))


def h_space_bins(bound: float, bins: int):
    """The official DMC support (`ez/utils/format.py`, DiscreteSupport for DMC): `bins` points
    spaced evenly in h-space from h(−bound) to h(bound), float32 [bins]."""
    top = float(scalar_transform(bound))
    return tf.linspace(-top, top, bins)


def scalar_to_h_space_two_hot(x, bound: float, bins: int):
    """h(x) split between its two nearest points of `h_space_bins` (clipped into the support):
    [...] -> [..., bins]."""
    top = float(scalar_transform(bound))
    step = 2 * top / (bins - 1)
    position = (tf.clip_by_value(scalar_transform(x), -top, top) + top) / step    # in [0, bins-1]
    low = tf.minimum(tf.floor(position), bins - 2)
    upper_weight = (position - low)[..., None]
    index = tf.cast(low, tf.int32)
    return (tf.one_hot(index, bins) * (1.0 - upper_weight)
            + tf.one_hot(index + 1, bins) * upper_weight)


def h_space_logits_to_scalar(logits, bound: float, bins: int):
    """Softmax expectation over `h_space_bins`, then the inverse transform: [..., bins] -> [...]."""
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    return inverse_scalar_transform(tf.reduce_sum(probabilities * h_space_bins(bound, bins),
                                                  axis=-1))


class Support(NamedTuple):
    """A categorical support of scalars (values or rewards), as the learner and search use it."""
    bound: float               # the largest |x| it represents; targets beyond are clipped
    two_hot: Callable          # x [...] -> target probabilities [..., bins]
    to_scalar: Callable        # logits [..., bins] -> x [...]


def grid_support(support_size: int, scale: float = 1.0) -> Support:
    """The Atari support: the multiples of `scale` in [-S, S] of h-space, with scale 1 the 2S+1
    integers (MuZero Appendix F; the official `value_support.scale`)."""
    return Support(float(inverse_scalar_transform(float(support_size))),
                   lambda x: scalar_to_two_hot(x, support_size, scale),
                   lambda logits: logits_to_scalar(logits, support_size, scale))


def h_space_support(bound: float, bins: int, nonnegative: bool = False) -> Support:
    """The official DMC support: `bins` points spaced evenly in h-space over ±bound; decoded
    scalars floored at 0 when `nonnegative` (the official DMC code's value clip)."""
    def to_scalar(logits):
        x = h_space_logits_to_scalar(logits, bound, bins)
        return tf.maximum(x, 0.0) if nonnegative else x
    return Support(bound, lambda x: scalar_to_h_space_two_hot(x, bound, bins), to_scalar)


# --- layers ---------------------------------------------------------------------------------------

def replicas() -> int:
    """How many replicas compute this call together: `learner_replicas` inside the learner's
    distributed update (`tf.distribute`), else 1."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def batch_moments(x, axes: list[int]):
    """Mean and biased variance of x over `axes`, and the count of values they span: over this
    call's batch, or, in the learner's distributed update, over the batches of all the replicas
    (two all-reduces, the variance about the global mean)."""
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
    if replicas() == 1:
        mean, variance = tf.nn.moments(x, axes=axes)
        return mean, variance, count
    context = tf.distribute.get_replica_context()
    total, count = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                      [tf.reduce_sum(x, axis=axes), count])
    mean = total / count
    variance = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  tf.reduce_sum(tf.square(x - mean), axis=axes)) / count
    return mean, variance, count


class BatchNorm(keras.layers.Layer):
    """BatchNorm over the last axis of [B, H, W, C] or [B, C] through TF's fused kernel (inference
    on [B, C]: a scale and an offset).

    About 1.4x faster than keras.layers.BatchNormalization on CPU (forward and backward of h at
    batch 256). Moving statistics as in PyTorch: weight 1 - NORM_MOMENTUM on the batch, unbiased
    variance.

    With `renorm` (Batch Renormalization, Ioffe 2017, without its clipping) the training forward
    normalises by the batch statistics times stop-gradient corrections r = σ_B / σ,
    d = (μ_B − μ) / σ toward the moving statistics: training computes exactly what inference
    computes, (x − μ) / σ · γ + β, with gradients through the batch statistics. Plain BatchNorm
    trains on each call's own batch statistics; in EfficientZero the moving statistics then blend
    the root and every unrolled step, so the inference root sees features normalised by statistics
    it was never trained with (on CartPole up to 12 moving standard deviations away, which is also
    why Ioffe's clipping of r and d to [1/3, 3] and [−5, 5] is left out: it kept 12% of the units
    mismatched).
    """

    def __init__(self, renorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.renorm = renorm

    def build(self, input_shape):
        channels = input_shape[-1]
        # float32 even under mixed precision: the fused kernel takes float32 scale and statistics.
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma",
                                     autocast=False)
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta",
                                    autocast=False)
        # Every replica computes the same statistics (`batch_moments`): the first one's are kept.
        self.moving_mean = self.add_weight(shape=(channels,), initializer="zeros",
                                           name="moving_mean", trainable=False, autocast=False,
                                           aggregation="only_first_replica")
        self.moving_variance = self.add_weight(shape=(channels,), initializer="ones",
                                               name="moving_variance", trainable=False,
                                               autocast=False, aggregation="only_first_replica")

    def call(self, x, training=False):
        flat = len(x.shape) == 2
        if flat and not training:
            # x·s + (β − μ·s), s = γ / sqrt(σ² + ε): after a Dense layer two element-wise ops beat
            # the fused kernel on a CPU (CartPole's initial inference 4.8 -> 3.2 ms on 384 states).
            # After a convolution the fused kernel stays: TF folds it into the convolution.
            scale = self.gamma * tf.math.rsqrt(self.moving_variance + NORM_EPSILON)
            offset = self.beta - self.moving_mean * scale
            return x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)
        if flat:
            x = x[:, None, None, :]                       # [B, C] -> [B, 1, 1, C]
                                                          # for the 4-D kernel
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=NORM_EPSILON, is_training=False)
        elif replicas() > 1:
            y, mean, variance = self._normalize_across_replicas(x)
        else:
            scale, offset = self.gamma, self.beta
            if self.renorm:
                batch_mean, batch_variance = tf.nn.moments(tf.cast(x, tf.float32), axes=[0, 1, 2])
                scale, offset = self._renorm_scale_offset(batch_mean, batch_variance)
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=NORM_EPSILON, is_training=True)
        if training:
            self.moving_mean.assign(NORM_MOMENTUM * self.moving_mean + (1 - NORM_MOMENTUM) * mean)
            self.moving_variance.assign(NORM_MOMENTUM * self.moving_variance
                                        + (1 - NORM_MOMENTUM) * variance)
        return y[:, 0, 0, :] if flat else y

    def _renorm_scale_offset(self, batch_mean, batch_variance):
        """y = (x̂ r + d) γ + β = x̂ (γ r) + (γ d + β), x̂ normalised by the batch statistics."""
        moving_std = tf.sqrt(self.moving_variance + NORM_EPSILON)
        r = tf.stop_gradient(tf.sqrt(batch_variance + NORM_EPSILON) / moving_std)
        d = tf.stop_gradient((batch_mean - self.moving_mean) / moving_std)
        return self.gamma * r, self.gamma * d + self.beta

    def _normalize_across_replicas(self, x):
        """The training forward of the fused kernel, with statistics over the whole batch of every
        replica (`learner_replicas`): (y, mean, unbiased variance), x [B, H, W, C]."""
        mean, variance, count = batch_moments(tf.cast(x, tf.float32), axes=[0, 1, 2])
        scale, offset = self.gamma, self.beta
        if self.renorm:
            scale, offset = self._renorm_scale_offset(mean, variance)
        y = (tf.cast(x, tf.float32) - mean) * (tf.math.rsqrt(variance + NORM_EPSILON) * scale) \
            + offset
        return tf.cast(y, x.dtype), mean, variance * count / tf.maximum(count - 1.0, 1.0)


def _normalization(config: Config, width: int):
    """BatchNorm (the paper) or GroupNorm (the blog) over the last axis of width `width`.

    GroupNorm uses gcd(group_norm_groups, width) groups, so narrow head layers stay valid.
    """
    if config.normalization == "batch":
        return BatchNorm(config.batch_renorm)
    return keras.layers.GroupNormalization(groups=math.gcd(config.group_norm_groups, width),
                                           epsilon=NORM_EPSILON)


def _pad_same(x, kernel_size: int):
    """Symmetric zero padding of kernel_size // 2 (PyTorch's padding=1 for a 3x3 conv or pool)."""
    pad = kernel_size // 2
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


class _Block(keras.layers.Layer):
    """A layer made of sub-layers, built by its first call (no weights of its own)."""

    def build(self, *args, **kwargs):
        self.built = True


class ResidualBlock(_Block):
    """conv3x3-norm-ReLU-conv3x3-norm, add the shortcut, ReLU: [B, H, W, C_in] -> [B, H/s, W/s, C].

    With stride 2 the shortcut is a stride-2 conv3x3 without normalisation (official DownSample).
    """

    KERNEL = 3

    def __init__(self, config: Config, channels: int, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride
        padding = "same" if stride == 1 else "valid"
        self.conv1 = keras.layers.Conv2D(channels, self.KERNEL, strides=stride, padding=padding,
                                         use_bias=False)
        self.norm1 = _normalization(config, channels)
        self.conv2 = keras.layers.Conv2D(channels, self.KERNEL, padding="same", use_bias=False)
        self.norm2 = _normalization(config, channels)
        self.shortcut = (keras.layers.Conv2D(channels, self.KERNEL, strides=stride, padding="valid",
                                             use_bias=False) if stride > 1 else None)

    def call(self, x, training=False):
        if self.shortcut is not None:
            x = _pad_same(x, self.KERNEL)
        out = tf.nn.relu(self.norm1(self.conv1(x), training=training))
        out = self.norm2(self.conv2(out), training=training)
        identity = x if self.shortcut is None else self.shortcut(x)
        return tf.nn.relu(out + identity)


class MLPHead(_Block):
    """Dense-norm-ELU per hidden size, then a zero-initialised float32 Dense: [B, D] -> [B, out].

    ELU is the official `mlp()` activation (the paper's figure says ReLU; we follow the code); the
    zero init makes the head output 0 at the start.
    """

    def __init__(self, config: Config, output_size: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(size) for size in config.head_hidden_sizes]
        self.norms = [_normalization(config, size) for size in config.head_hidden_sizes]
        self.out = keras.layers.Dense(output_size, kernel_initializer="zeros", dtype="float32")

    def call(self, x, training=False):
        for dense, norm in zip(self.hidden, self.norms):
            x = tf.nn.elu(norm(dense(x), training=training))
        return self.out(x)


class Reduce(_Block):
    """Head input: conv1x1 -> reduced_channels, norm, ReLU, flatten ([B, H, W, C] -> [B, H*W*r]) for
    the conv network; the identity on the flat latent of the MLP network."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.is_conv = config.network == "conv"
        if self.is_conv:
            self.conv = keras.layers.Conv2D(config.reduced_channels, 1)
            self.norm = _normalization(config, config.reduced_channels)
            self.flatten = keras.layers.Flatten()

    def call(self, x, training=False):
        if not self.is_conv:
            return x
        return self.flatten(tf.nn.relu(self.norm(self.conv(x), training=training)))


class ConvRepresentation(_Block):
    """h (official RepresentationNetwork). With `downsample` (Atari):
    [B, 96, 96, 12] -> [B, 6, 6, C] through DownSample: conv3x3 s2 -> C/2, norm, ReLU; residual
    block (C/2); residual block s2 -> C; residual block; avg-pool 3 s2; residual block; avg-pool 3
    s2. Without it (small grids such as MinAtar's 10x10): conv3x3 s1 -> C, norm, ReLU, keeping the
    grid. Then num_blocks residual blocks."""

    KERNEL = 3
    STRIDE = 2

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        channels = config.num_channels
        self.downsample = config.downsample
        if self.downsample:
            self.stem = keras.layers.Conv2D(channels // 2, self.KERNEL, strides=self.STRIDE,
                                            padding="valid", use_bias=False)
            self.stem_norm = _normalization(config, channels // 2)
            self.half_block = ResidualBlock(config, channels // 2)
            self.downsample_block = ResidualBlock(config, channels, stride=self.STRIDE)
            self.full_block = ResidualBlock(config, channels)
            # PyTorch AvgPool2d(3, 2, padding=1) counts the zero padding in the mean: pad, pool.
            self.pool = keras.layers.AveragePooling2D(self.KERNEL, strides=self.STRIDE,
                                                      padding="valid")
            self.pooled_block = ResidualBlock(config, channels)
        else:
            self.stem = keras.layers.Conv2D(channels, self.KERNEL, padding="same", use_bias=False)
            self.stem_norm = _normalization(config, channels)
        self.tower = [ResidualBlock(config, channels) for _ in range(config.num_blocks)]

    def call(self, x, training=False):
        if self.downsample:
            x = tf.nn.relu(self.stem_norm(self.stem(_pad_same(x, self.KERNEL)), training=training))
            x = self.half_block(x, training=training)
            x = self.downsample_block(x, training=training)
            x = self.full_block(x, training=training)
            x = self.pool(_pad_same(x, self.KERNEL))
            x = self.pooled_block(x, training=training)
            x = self.pool(_pad_same(x, self.KERNEL))
        else:
            x = tf.nn.relu(self.stem_norm(self.stem(x), training=training))
        for block in self.tower:
            x = block(x, training=training)
        return x


class GlobalLayer(_Block):
    """A residual layer that reaches the whole grid: [B, H, W, C] -> [B, H, W, C]. conv1x1 -> G
    channels, norm, ReLU; flatten; Dense H*W*G; back to [B, H, W, G]; conv1x1 -> C, norm; plus the
    input, ReLU. Not in the paper (`dynamics_global_channels`)."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.global_channels = config.dynamics_global_channels
        self.reduce = keras.layers.Conv2D(self.global_channels, 1, use_bias=False)
        self.reduce_norm = _normalization(config, self.global_channels)
        self.expand = keras.layers.Conv2D(config.num_channels, 1, use_bias=False)
        self.expand_norm = _normalization(config, config.num_channels)

    def build(self, input_shape):
        _, height, width, _ = input_shape
        self.grid = (height, width)
        self.mix = keras.layers.Dense(height * width * self.global_channels)
        self.built = True

    def call(self, x, training=False):
        reduced = tf.nn.relu(self.reduce_norm(self.reduce(x), training=training))
        height, width = self.grid
        mixed = self.mix(tf.reshape(reduced, [-1, height * width * self.global_channels]))
        mixed = tf.reshape(mixed, [-1, height, width, self.global_channels])
        return tf.nn.relu(x + self.expand_norm(self.expand(mixed), training=training))


class ConvDynamics(_Block):
    """g's state transition: ([B, 6, 6, C], actions [B]) -> [B, 6, 6, C] (official DynamicsNetwork
    with action_embedding): the action as a plane of value a/A (or, with action_encoding='one_hot',
    as A planes, 1 on plane a) -> conv1x1 -> reduced_channels, LayerNorm, ReLU; concatenated with
    the state; conv3x3 -> C, norm, plus the state, ReLU; num_blocks residual blocks; with
    `dynamics_global_channels` a GlobalLayer last."""

    def __init__(self, config: Config, num_actions: int, **kwargs):
        super().__init__(**kwargs)
        self.num_actions = num_actions
        self.one_hot = config.action_encoding == "one_hot"
        self.action_conv = keras.layers.Conv2D(config.reduced_channels, 1)
        self.action_norm = keras.layers.LayerNormalization(axis=[-3, -2, -1], epsilon=NORM_EPSILON)
        self.conv = keras.layers.Conv2D(config.num_channels, ResidualBlock.KERNEL, padding="same",
                                        use_bias=False)
        self.norm = _normalization(config, config.num_channels)
        self.tower = [ResidualBlock(config, config.num_channels) for _ in range(config.num_blocks)]
        if config.dynamics_global_channels:
            self.tower.append(GlobalLayer(config))

    def call(self, state, actions, training=False):
        if self.one_hot:
            code = tf.one_hot(actions, self.num_actions, dtype=state.dtype)           # [B, A]
        else:
            code = (tf.cast(actions, state.dtype) / self.num_actions)[:, None]        # [B, 1]
        plane = tf.ones_like(state[..., :1]) * code[:, None, None, :]            # [B, 6, 6, A or 1]
        embedding = tf.nn.relu(self.action_norm(self.action_conv(plane)))
        x = self.norm(self.conv(tf.concat([state, embedding], axis=-1)), training=training)
        x = tf.nn.relu(x + state)
        for block in self.tower:
            x = block(x, training=training)
        return x


class MLPRepresentation(_Block):
    """h for vector observations: [B, D] -> [B, mlp_state_size]. Dense-LayerNorm-ReLU per hidden
    size, then Dense, LayerNorm and tanh (the official state-MLP's bounded latent)."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(size) for size in config.mlp_hidden_sizes]
        self.norms = [keras.layers.LayerNormalization(epsilon=NORM_EPSILON)
                      for _ in config.mlp_hidden_sizes]
        self.out = keras.layers.Dense(config.mlp_state_size)
        self.out_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON)

    def call(self, x, training=False):
        for dense, norm in zip(self.hidden, self.norms):
            x = tf.nn.relu(norm(dense(x)))
        return tf.tanh(self.out_norm(self.out(x)))


class MLPDynamics(_Block):
    """g's state transition for the flat latent:
    concat(state, one-hot action) -> Dense-LayerNorm-ReLU per hidden size -> Dense(mlp_state_size),
    added to the state (residual), LayerNorm, tanh."""

    def __init__(self, config: Config, num_actions: int, **kwargs):
        super().__init__(**kwargs)
        self.num_actions = num_actions
        self.hidden = [keras.layers.Dense(size) for size in config.mlp_hidden_sizes]
        self.norms = [keras.layers.LayerNormalization(epsilon=NORM_EPSILON)
                      for _ in config.mlp_hidden_sizes]
        self.out = keras.layers.Dense(config.mlp_state_size)
        self.out_norm = keras.layers.LayerNormalization(epsilon=NORM_EPSILON)

    def call(self, state, actions, training=False):
        x = tf.concat([state, tf.one_hot(actions, self.num_actions, dtype=state.dtype)], axis=-1)
        for dense, norm in zip(self.hidden, self.norms):
            x = tf.nn.relu(norm(dense(x)))
        return tf.tanh(self.out_norm(state + self.out(x)))


class RewardHead(_Block):
    """Value-prefix head (official SupportLSTMNetwork): reduce, LSTM step, norm, ReLU, MLP -> N
    logits, with the LSTM state (h, c) [B, lstm_hidden_size] carried by the caller. With
    value_prefix=False a plain reward head (official SupportNetwork): reduce, MLP -> N logits."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.value_prefix = config.value_prefix
        self.reduce = Reduce(config)
        if self.value_prefix:
            self.lstm = keras.layers.LSTMCell(config.lstm_hidden_size)
            self.norm = _normalization(config, config.lstm_hidden_size)
        self.mlp = MLPHead(config, config.support_bins)

    def call(self, state, lstm_state, training=False):
        x = self.reduce(state, training=training)
        if not self.value_prefix:
            return self.mlp(x, training=training), ()
        hidden, cell = (tf.cast(s, x.dtype) for s in lstm_state)
        x, (hidden, cell) = self.lstm(x, [hidden, cell], training=training)
        x = tf.nn.relu(self.norm(x, training=training))
        return self.mlp(x, training=training), (hidden, cell)


class Prediction(_Block):
    """f: latent -> (value logits [B, N], policy logits [B, A]) (official ValuePolicyNetwork,
    v_num=1): num_blocks residual blocks (conv only), then a value and a policy head, each
    reduce + MLP."""

    def __init__(self, config: Config, num_actions: int, **kwargs):
        super().__init__(**kwargs)
        self.tower = ([ResidualBlock(config, config.num_channels) for _ in range(config.num_blocks)]
                      if config.network == "conv" else [])
        self.value_reduce = Reduce(config)
        self.value_mlp = MLPHead(config, config.support_bins)
        self.policy_reduce = Reduce(config)
        self.policy_mlp = MLPHead(config, num_actions)

    def call(self, x, training=False):
        for block in self.tower:
            x = block(x, training=training)
        value = self.value_mlp(self.value_reduce(x, training=training), training=training)
        policy = self.policy_mlp(self.policy_reduce(x, training=training), training=training)
        return value, policy


class Projection(_Block):
    """SimSiam P1 (official ProjectionNetwork): flatten -> Dense(hidden) norm ReLU -> Dense(hidden)
    norm ReLU -> Dense(out) norm: [B, ...] -> [B, projection_output_size]. The norm is the
    config's, or LayerNorm with `layer_norm` (the official DMC-state network's)."""

    def __init__(self, config: Config, layer_norm: bool = False, **kwargs):
        super().__init__(**kwargs)
        hidden, out = config.projection_hidden_size, config.projection_output_size
        self.flatten = keras.layers.Flatten()
        self.dense = [keras.layers.Dense(hidden), keras.layers.Dense(hidden),
                      keras.layers.Dense(out)]
        self.norms = [_layer_norm() if layer_norm else _normalization(config, width)
                      for width in (hidden, hidden, out)]

    def call(self, x, training=False):
        x = self.flatten(x)
        for i, (dense, norm) in enumerate(zip(self.dense, self.norms)):
            x = norm(dense(x), training=training)
            if i < len(self.dense) - 1:
                x = tf.nn.relu(x)
        return x


class ProjectionHead(_Block):
    """SimSiam P2 (official ProjectionHeadNetwork): Dense(prediction_head_hidden) norm ReLU ->
    Dense(out): [B, projection_output_size] -> [B, projection_output_size]; the norm as
    Projection's."""

    def __init__(self, config: Config, layer_norm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(config.prediction_head_hidden_size)
        self.norm = (_layer_norm() if layer_norm
                     else _normalization(config, config.prediction_head_hidden_size))
        self.out = keras.layers.Dense(config.projection_output_size)

    def call(self, x, training=False):
        return self.out(tf.nn.relu(self.norm(self.hidden(x), training=training)))


# --- initialisation -------------------------------------------------------------------------------

def torch_default_initialisation(block: keras.layers.Layer) -> None:
    """Re-draw the weights of every Conv2D, Dense and LSTMCell inside `block` as PyTorch initialises
    them, which the official code relies on: kernels and biases uniform in ±1/sqrt(fan_in)
    (kaiming_uniform with a = sqrt(5)); an LSTM's weights and its two biases (summed here into
    Keras' one) uniform in ±1/sqrt(hidden). Layers built with a zero kernel (the last layer of each
    head) stay zero. Keras' defaults (Glorot kernels, zero biases) differ, and a zero bias makes the
    action plane a/A of ConvDynamics give the same LayerNorm-ed embedding for every action a > 0.
    Draws from TensorFlow's global generator, so keras.utils.set_random_seed fixes them."""
    for layer in block._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            if isinstance(layer.kernel_initializer, keras.initializers.Zeros):
                continue
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
            _uniform(layer.kernel, 1.0 / math.sqrt(fan_in))
            if layer.use_bias:
                _uniform(layer.bias, 1.0 / math.sqrt(fan_in))
        elif isinstance(layer, keras.layers.LSTMCell):
            bound = 1.0 / math.sqrt(layer.units)
            _uniform(layer.kernel, bound)
            _uniform(layer.recurrent_kernel, bound)
            layer.bias.assign(tf.random.uniform(layer.bias.shape, -bound, bound)
                              + tf.random.uniform(layer.bias.shape, -bound, bound))


def _uniform(variable, bound: float) -> None:
    variable.assign(tf.random.uniform(variable.shape, -bound, bound, dtype=variable.dtype))


# --- the network ----------------------------------------------------------------------------------

def min_max_scale(latent):
    """MuZero's hidden-state scaling (Appendix G; official `normalize_state`, `model.state_norm`):
    each sample's latent shifted and divided to span [0, 1], [B, ...] -> [B, ...], the range floored
    at STATE_RANGE_FLOOR. With it g's states keep the root's scale at every depth, so the BatchNorm
    statistics f's layers share across the unroll fit each depth (docs/design.md, "BatchNorm in a
    recurrent unroll")."""
    axes = list(range(1, len(latent.shape)))
    low = tf.reduce_min(latent, axis=axes, keepdims=True)
    high = tf.reduce_max(latent, axis=axes, keepdims=True)
    return (latent - low) / tf.maximum(high - low, tf.cast(STATE_RANGE_FLOOR, latent.dtype))


def scale_gradient(x, scale: float):
    """x in the forward pass; its gradient times `scale` in the backward pass."""
    if scale == 1.0:
        return x
    return scale * x + (1.0 - scale) * tf.stop_gradient(x)


class _Weights:
    """Weights as NumPy arrays, in the fixed order of the network's `variables`."""

    def get_weights(self) -> list:
        return [np.array(v.numpy()) for v in self.variables]

    def set_weights(self, weights: list) -> None:
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(f"expected {len(variables)} weight arrays, got {len(weights)}")
        for variable, value in zip(variables, weights):
            variable.assign(value)


class EfficientZeroNet(_Weights):
    """h, g (with the value-prefix head), f and the SimSiam heads, plus the search-side adapter.

    `observation_shape` is (H, W, frame_stack * channels) uint8 for Atari or (D,) float32 for vector
    tasks. The search state (an opaque tuple of NumPy arrays, batch first) is `(latent,)`, or with
    `value_prefix` `(latent, lstm_h, lstm_c, parent_prefix [B], steps_since_reset [B] int32)`.
    """

    def __init__(self, config: Config, observation_shape: tuple, num_actions: int):
        self.config = config
        self.observation_shape = tuple(observation_shape)
        self.num_actions = num_actions
        self.is_image = len(self.observation_shape) == 3
        self.action_dims = 0                             # discrete actions
        self.value_support = self.reward_support = grid_support(config.support_size,
                                                                 config.support_scale)
        conv = config.network == "conv"
        self.representation = ConvRepresentation(config) if conv else MLPRepresentation(config)
        self.transition = (ConvDynamics(config, num_actions) if conv
                           else MLPDynamics(config, num_actions))
        self.reward_head = RewardHead(config)
        self.prediction = Prediction(config, num_actions)
        self.projection = Projection(config)
        self.projection_head = ProjectionHead(config)
        self._parts = {
            "representation": [self.representation],
            "dynamics": [self.transition, self.reward_head],
            "prediction": [self.prediction],
            "projection": [self.projection, self.projection_head],
        }
        self._build()
        self.trace_counts = {"initial_inference": 0, "initial_inference_sequence": 0,
                             "recurrent_inference": 0}
        obs_dtype = tf.uint8 if self.is_image else tf.float32
        self._initial = tf.function(
            self.initial_graph, jit_compile=config.xla_inference,
            input_signature=[tf.TensorSpec([None, *self.observation_shape], obs_dtype)])
        # One replay frame: the stacked observation has frame_stack of them along its last axis.
        self.frame_shape = (*self.observation_shape[:-1],
                            self.observation_shape[-1] // config.frame_stack)
        self._initial_sequence = tf.function(
            self._initial_sequence_graph, jit_compile=config.xla_inference,
            input_signature=[tf.TensorSpec([None, None, *self.frame_shape], obs_dtype)])
        state_spec = (tf.TensorSpec([None, *self.latent_shape], tf.float32),)
        if config.value_prefix:
            lstm_spec = tf.TensorSpec([None, config.lstm_hidden_size], tf.float32)
            state_spec += (lstm_spec, lstm_spec, tf.TensorSpec([None], tf.float32),
                           tf.TensorSpec([None], tf.int32))
        self._recurrent = tf.function(
            self.recurrent_graph, jit_compile=config.xla_inference,
            input_signature=[state_spec, tf.TensorSpec([None], tf.int32)])
        self._initial_call = compiled_call(self._initial)
        self._initial_sequence_call = compiled_call(self._initial_sequence)
        self._recurrent_call = compiled_call(self._recurrent)

    def _build(self):
        """Create every weight with one batch of zeros (inference mode), give it PyTorch's default
        initialisation and record the latent shape."""
        batch = 2
        observations = np.zeros((batch, *self.observation_shape),
                                np.uint8 if self.is_image else np.float32)
        latent = self.represent(self.preprocess(observations), training=False)
        self.latent_shape = tuple(latent.shape[1:])
        self.dynamics(latent, tf.zeros([batch], tf.int32), self.initial_lstm_state(batch),
                      training=False)
        self.predict(latent, training=False)
        self.predict_projection(self.project(latent, training=False), training=False)
        for layers in self._parts.values():
            for layer in layers:
                torch_default_initialisation(layer)

    # --- training-side building blocks (TF tensors in and out) ------------------------------------

    def preprocess(self, observations):
        """uint8 pixels -> float32 in [0, 1] (any leading dims); float observations pass through."""
        observations = tf.convert_to_tensor(observations)
        if observations.dtype == tf.uint8:
            return tf.cast(observations, tf.float32) / 255.0
        return tf.cast(observations, tf.float32)

    def represent(self, inputs, training):
        """h: preprocessed observations [B, *obs] -> latent [B, 6, 6, C] or [B, mlp_state_size]
        (min-max scaled with `state_norm`)."""
        latent = self.representation(inputs, training=training)
        return min_max_scale(latent) if self.config.state_norm else latent

    def initial_lstm_state(self, batch):
        """Zero LSTM state (h, c), each [B, lstm_hidden_size]; () without value_prefix."""
        if not self.config.value_prefix:
            return ()
        zeros = tf.zeros([batch, self.config.lstm_hidden_size], tf.float32)
        return (zeros, zeros)

    def dynamics(self, latent, actions, lstm_state, training, state_gradient_scale=1.0):
        """g: (latent [B, ...], actions [B] int32, lstm_state) -> (next latent, reward logits
        [B, N] float32 (the value prefix since the last LSTM reset, or the reward), lstm_state).

        `state_gradient_scale` scales the gradient flowing back into the next latent from all its
        readers, the reward head included (the forward value is unchanged); with `state_norm` the
        next latent is min-max scaled first, as the official `do_dynamics`."""
        next_latent = self.transition(latent, actions, training=training)
        if self.config.state_norm:
            next_latent = min_max_scale(next_latent)
        next_latent = scale_gradient(next_latent, state_gradient_scale)
        reward_logits, lstm_state = self.reward_head(next_latent, lstm_state, training=training)
        return next_latent, tf.cast(reward_logits, tf.float32), lstm_state

    def predict(self, latent, training):
        """f: latent -> (value logits [B, N], policy logits [B, A]), both float32."""
        value_logits, policy_logits = self.prediction(latent, training=training)
        return tf.cast(value_logits, tf.float32), tf.cast(policy_logits, tf.float32)

    def project(self, latent, training):
        """SimSiam P1: latent -> [B, projection_output_size] float32."""
        return tf.cast(self.projection(latent, training=training), tf.float32)

    def predict_projection(self, projection, training):
        """SimSiam P2: [B, projection_output_size] -> [B, projection_output_size] float32."""
        return tf.cast(self.projection_head(projection, training=training), tf.float32)

    # --- the search-side adapter (NumPy in and out) -----------------------------------------------

    def initial_graph(self, observations):
        """The graph `initial_inference` traces: observations [B, *obs] -> (state, reward 0, value,
        policy logits), scalars decoded."""
        self.trace_counts["initial_inference"] += 1      # Python side effect:
                                                         # runs only when tracing
        return self._initial_outputs(observations)

    def _initial_sequence_graph(self, frames):
        self.trace_counts["initial_inference_sequence"] += 1
        stacked = stack_frames(frames, self.config.frame_stack)        # [N, P, *obs]
        return self._initial_outputs(tf.reshape(stacked, [-1, *self.observation_shape]))

    def _initial_outputs(self, observations):
        latent = self.represent(self.preprocess(observations), training=False)
        value_logits, policy_logits = self.predict(latent, training=False)
        batch = tf.shape(latent)[0]
        state = (tf.cast(latent, tf.float32),)
        if self.config.value_prefix:
            state += self.initial_lstm_state(batch) + (tf.zeros([batch], tf.float32),
                                                        tf.zeros([batch], tf.int32))
        value = self.value_support.to_scalar(value_logits)
        return state, tf.zeros_like(value), value, policy_logits

    def recurrent_graph(self, state, actions):
        """The graph `recurrent_inference` traces: (state, actions [B]) -> (next state, reward,
        value, policy logits), scalars decoded."""
        self.trace_counts["recurrent_inference"] += 1
        if self.config.value_prefix:
            latent, hidden, cell, parent_prefix, steps = state
            latent, logits, (hidden, cell) = self.dynamics(latent, actions, (hidden, cell),
                                                           training=False)
            prefix = self.reward_support.to_scalar(logits)
            reward = prefix - parent_prefix
            steps = steps + 1
            # The LSTM and the prefix restart every lstm_horizon_len steps, as in training.
            reset = steps >= self.config.lstm_horizon_len
            keep = tf.cast(tf.logical_not(reset), tf.float32)
            next_state = (tf.cast(latent, tf.float32), tf.cast(hidden, tf.float32) * keep[:, None],
                          tf.cast(cell, tf.float32) * keep[:, None], prefix * keep,
                          tf.where(reset, tf.zeros_like(steps), steps))
        else:
            latent, logits, _ = self.dynamics(state[0], actions, (), training=False)
            reward = self.reward_support.to_scalar(logits)
            next_state = (tf.cast(latent, tf.float32),)
        value_logits, policy_logits = self.predict(latent, training=False)
        return next_state, reward, self.value_support.to_scalar(value_logits), policy_logits

    @staticmethod
    def _to_numpy(state, reward, value, policy_logits) -> NetworkOutput:
        return NetworkOutput(tuple(s.numpy() for s in state), reward.numpy(), value.numpy(),
                             policy_logits.numpy())

    def initial_inference(self, observations: np.ndarray) -> NetworkOutput:
        """Observations [B, *obs] -> root state, reward 0, value [B], policy logits [B, A]."""
        dtype = np.uint8 if self.is_image else np.float32
        return self._to_numpy(*self._initial_call(np.asarray(observations, dtype)))

    def initial_inference_sequence(self, frames: np.ndarray) -> NetworkOutput:
        """Single frames [N, S - 1 + P, *frame] -> initial inference of the P stacked observations
        of every row, flattened row-major to [N * P] (stacking happens in the graph)."""
        dtype = np.uint8 if self.is_image else np.float32
        return self._to_numpy(*self._initial_sequence_call(np.asarray(frames, dtype)))

    def recurrent_inference(self, state: tuple, actions: np.ndarray) -> NetworkOutput:
        """(state, actions [B] int) -> next state, reward [B], value [B], policy logits [B, A]."""
        return self._to_numpy(*self._recurrent_call(tuple(state), np.asarray(actions, np.int32)))

    # --- weights ----------------------------------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        return [v for layers in self._parts.values() for layer in layers
                for v in layer.trainable_weights]

    @property
    def variables(self) -> list:
        """Every variable, BatchNorm moving statistics included, in a fixed order."""
        return [v for layers in self._parts.values() for layer in layers for v in layer.weights]

    def parameter_counts(self) -> dict:
        """Trainable parameters per part (as PyTorch's parameters(): moving statistics excluded)."""
        counts = {name: int(sum(np.prod(v.shape) for layer in layers
                                for v in layer.trainable_weights))
                  for name, layers in self._parts.items()}
        counts["total"] = sum(counts.values())
        return counts


# --- continuous control: the official DMC-state network (`ez/agents/ez_dmc_state.py`) ------------

class RunningMeanStd(keras.layers.Layer):
    """The observation normaliser of the official DMC-state h: (x − mean) / sqrt(var + 1e-5), with
    moments that only a training call (the learner's) updates, from mean 0, var 1 and a count of
    1,000, by the parallel-moments rule; a training call normalises with the updated moments.
    They are non-trainable weights, so they travel and are checkpointed with the network."""

    START_COUNT = 1e3
    EPSILON = 1e-5

    def build(self, input_shape):
        width = input_shape[-1]
        # Every replica computes the same moments (`batch_moments`): the first one's are kept.
        self.mean = self.add_weight(shape=(width,), initializer="zeros", name="mean",
                                    trainable=False, autocast=False,
                                    aggregation="only_first_replica")
        self.var = self.add_weight(shape=(width,), initializer="ones", name="var",
                                   trainable=False, autocast=False,
                                   aggregation="only_first_replica")
        self.count = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            self.START_COUNT), name="count", dtype="float64", trainable=False, autocast=False,
            aggregation="only_first_replica")

    def call(self, x, training=False):
        mean, var = self.mean, self.var
        if training:
            batch_mean, batch_var, batch = batch_moments(x, axes=[0])
            count = tf.cast(self.count, tf.float32)
            total = count + batch
            delta = batch_mean - mean
            mean = mean + delta * batch / total
            var = (var * count + batch_var * batch
                   + tf.square(delta) * count * batch / total) / total
            self.mean.assign(mean)
            self.var.assign(var)
            self.count.assign_add(tf.cast(batch, tf.float64))
        return (x - mean) / tf.sqrt(var + self.EPSILON)


def _layer_norm():
    return keras.layers.LayerNormalization(epsilon=NORM_EPSILON)


class PreNormResidualBlock(_Block):
    """x + Dense(width)(ReLU(Dense(hidden)(LayerNorm(x)))): [B, width] -> [B, width] (official
    ImproveResidualBlock, a pre-LN Transformer block, Xiong et al. 2020)."""

    def __init__(self, width: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.norm = _layer_norm()
        self.inner = keras.layers.Dense(hidden)
        self.outer = keras.layers.Dense(width)

    def call(self, x, training=False):
        return x + self.outer(tf.nn.relu(self.inner(self.norm(x))))


class StateRepresentation(_Block):
    """h: observation [B, D] -> latent [B, S]: RunningMeanStd, Dense(S), LayerNorm, tanh, then
    num_blocks pre-LN residual blocks."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.normalizer = RunningMeanStd(dtype="float32")     # float32 moments under any policy
        self.dense = keras.layers.Dense(config.mlp_state_size)
        self.norm = _layer_norm()
        self.blocks = [PreNormResidualBlock(config.mlp_state_size, config.residual_hidden_size)
                       for _ in range(config.num_blocks)]

    def call(self, x, training=False):
        x = tf.tanh(self.norm(self.dense(self.normalizer(x, training=training))))
        for block in self.blocks:
            x = block(x)
        return x


class StateDynamics(_Block):
    """g: (latent [B, S], action [B, A] in [-1, 1]) -> latent [B, S]: the action embedded by
    Dense-LayerNorm-ReLU, concatenated with the latent, LayerNorm, Dense(hidden), ReLU, Dense(S),
    added to the latent, then num_blocks pre-LN residual blocks (no value-prefix LSTM)."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.action_dense = keras.layers.Dense(config.action_embedding_size)
        self.action_norm = _layer_norm()
        self.norm = _layer_norm()
        self.inner = keras.layers.Dense(config.residual_hidden_size)
        self.outer = keras.layers.Dense(config.mlp_state_size)
        self.blocks = [PreNormResidualBlock(config.mlp_state_size, config.residual_hidden_size)
                       for _ in range(config.num_blocks)]

    def call(self, state, actions, training=False):
        embedding = tf.nn.relu(self.action_norm(self.action_dense(actions)))
        x = self.norm(tf.concat([state, embedding], axis=-1))
        state = state + self.outer(tf.nn.relu(self.inner(x)))
        for block in self.blocks:
            state = block(state)
        return state


class StateHead(_Block):
    """A reward, value or policy head: a pre-LN residual block (width S, hidden S), LayerNorm,
    then Dense-BatchNorm-ReLU per hidden size and a float32 Dense, zero-initialised when
    `zero_init` (official `mlp` with use_bn): [B, S] -> [B, output_size]."""

    def __init__(self, config: Config, output_size: int, zero_init: bool, **kwargs):
        super().__init__(**kwargs)
        self.block = PreNormResidualBlock(config.mlp_state_size, config.mlp_state_size)
        self.norm = _layer_norm()
        self.hidden = [keras.layers.Dense(size) for size in config.head_hidden_sizes]
        self.norms = [_normalization(config, size) for size in config.head_hidden_sizes]
        self.out = keras.layers.Dense(output_size, dtype="float32",
                                      kernel_initializer="zeros" if zero_init else "glorot_uniform")

    def call(self, x, training=False):
        x = self.norm(self.block(x))
        for dense, norm in zip(self.hidden, self.norms):
            x = tf.nn.relu(norm(dense(x), training=training))
        return self.out(x)


def policy_parameters(raw, config: Config):
    """The policy head's output [B, 2A] -> (μ, σ) [B, A] each, before squashing: μ = b·tanh(μ_raw /
    b), σ = softplus(σ_raw + offset) + min_std (official ValuePolicyNetwork, as Dreamer-v3)."""
    raw_mean, raw_std = tf.split(raw, 2, axis=-1)
    bound = config.policy_mean_bound
    return (bound * tf.tanh(raw_mean / bound),
            tf.nn.softplus(raw_std + config.policy_std_offset) + config.policy_min_std)


def squashed_gaussian(mean, std):
    """tanh(Normal(μ, σ)), independent per action dimension (official SquashedNormal): a
    tensorflow-probability TransformedDistribution with the Tanh bijector, whose log-density at a
    ∈ (−1, 1) is log N(atanh a; μ, σ) − log(1 − a²) per dimension."""
    import tensorflow_probability as tfp

    return tfp.distributions.TransformedDistribution(
        tfp.distributions.Normal(mean, std), tfp.bijectors.Tanh())


class StateNet(_Weights):
    """The official DMC-state network (`ez/agents/ez_dmc_state.py`): h, g (rewards, no value
    prefix), the reward head (on the next latent), the value and policy heads and the SimSiam heads,
    for observations [B, D] and continuous actions [B, A] in [-1, 1]. The reward and policy heads'
    last layers start at zero (the value head's does not, as in the official code).

    The same two faces as EfficientZeroNet: training-side blocks for the learner (TF tensors; the
    policy output is the head's raw [B, 2A], read by `policy_parameters`) and the search-side
    adapter (NumPy; `GaussianOutput`, μ and σ decoded). The search state is `(latent,)`.
    """

    def __init__(self, config: Config, observation_shape: tuple, action_dims: int):
        self.config, self.action_dims = config, action_dims
        self.observation_shape = tuple(observation_shape)
        self.frame_shape = (self.observation_shape[0] // config.frame_stack,)
        self.is_image = False
        bins = config.state_support_bins
        self.value_support = h_space_support(config.state_value_bound, bins,
                                             config.nonnegative_values)
        self.reward_support = h_space_support(config.state_reward_bound, bins)
        self.representation = StateRepresentation(config)
        self.transition = StateDynamics(config)
        self.reward_head = StateHead(config, bins, zero_init=True)
        self.value_head = StateHead(config, bins, zero_init=False)
        self.policy_head = StateHead(config, 2 * action_dims, zero_init=True)
        self.projection = Projection(config, layer_norm=True)
        self.projection_head = ProjectionHead(config, layer_norm=True)
        self.blocks = {"representation": self.representation, "dynamics": self.transition,
                       "reward": self.reward_head, "value": self.value_head,
                       "policy": self.policy_head, "projection": self.projection,
                       "projection_head": self.projection_head}
        latent = self.representation(tf.zeros((2, *self.observation_shape)))
        self.latent_shape = tuple(latent.shape[1:])
        self.reward_head(self.transition(latent, tf.zeros((2, action_dims))))
        self.value_head(latent)
        self.policy_head(latent)
        self.projection_head(self.projection(latent))
        for block in self.blocks.values():
            torch_default_initialisation(block)
        observations = tf.TensorSpec([None, *self.observation_shape], tf.float32)
        frames = tf.TensorSpec([None, None, *self.frame_shape], tf.float32)
        state = (tf.TensorSpec([None, *self.latent_shape], tf.float32),)
        actions = tf.TensorSpec([None, action_dims], tf.float32)
        self._initial_call = compiled_call(tf.function(
            self._initial_outputs, jit_compile=config.xla_inference,
            input_signature=[observations]))
        self._initial_sequence_call = compiled_call(tf.function(
            self._initial_sequence_graph, jit_compile=config.xla_inference,
            input_signature=[frames]))
        self._recurrent_call = compiled_call(tf.function(
            self._recurrent_graph, jit_compile=config.xla_inference,
            input_signature=[state, actions]))

    # --- training-side building blocks (TF tensors in and out), as EfficientZeroNet's -------------

    def preprocess(self, observations):
        return tf.cast(tf.convert_to_tensor(observations), tf.float32)

    def represent(self, inputs, training):
        """h: [B, D] -> [B, S] (min-max scaled with `state_norm`); a training call also updates
        the observation normaliser."""
        latent = self.representation(inputs, training=training)
        return min_max_scale(latent) if self.config.state_norm else latent

    def initial_lstm_state(self, batch):
        return ()

    def dynamics(self, latent, actions, lstm_state, training, state_gradient_scale=1.0):
        """g: (latent [B, S], actions [B, A], ()) -> (next latent, reward logits [B, bins], ()); the
        next latent min-max scaled and its gradient scaled as EfficientZeroNet.dynamics does."""
        next_latent = self.transition(latent, actions, training=training)
        if self.config.state_norm:
            next_latent = min_max_scale(next_latent)
        next_latent = scale_gradient(next_latent, state_gradient_scale)
        reward_logits = self.reward_head(next_latent, training=training)
        return next_latent, tf.cast(reward_logits, tf.float32), ()

    def predict(self, latent, training):
        """f: latent -> (value logits [B, bins], the policy head's raw output [B, 2A])."""
        return (tf.cast(self.value_head(latent, training=training), tf.float32),
                tf.cast(self.policy_head(latent, training=training), tf.float32))

    def project(self, latent, training):
        return tf.cast(self.projection(latent, training=training), tf.float32)

    def predict_projection(self, projection, training):
        return tf.cast(self.projection_head(projection, training=training), tf.float32)

    # --- the search-side adapter (NumPy in and out) -----------------------------------------------

    def _outputs(self, latent, reward):
        value_logits, raw_policy = self.predict(latent, training=False)
        mean, std = policy_parameters(raw_policy, self.config)
        return ((tf.cast(latent, tf.float32),), reward,
                self.value_support.to_scalar(value_logits), mean, std)

    def _initial_outputs(self, observations):
        latent = self.represent(observations, training=False)
        return self._outputs(latent, tf.zeros([tf.shape(latent)[0]], tf.float32))

    def _initial_sequence_graph(self, frames):
        stacked = stack_frames(frames, self.config.frame_stack)        # [N, P, D]
        return self._initial_outputs(tf.reshape(stacked, [-1, *self.observation_shape]))

    def _recurrent_graph(self, state, actions):
        latent, reward_logits, _ = self.dynamics(state[0], actions, (), training=False)
        return self._outputs(latent, self.reward_support.to_scalar(reward_logits))

    @staticmethod
    def _to_numpy(state, reward, value, mean, std) -> GaussianOutput:
        return GaussianOutput(tuple(s.numpy() for s in state), reward.numpy(), value.numpy(),
                              mean.numpy(), std.numpy())

    def initial_inference(self, observations: np.ndarray) -> GaussianOutput:
        """Observations [B, D] -> root state, reward 0, value [B], μ and σ [B, A]."""
        return self._to_numpy(*self._initial_call(np.asarray(observations, np.float32)))

    def initial_inference_sequence(self, frames: np.ndarray) -> GaussianOutput:
        """Single frames [N, S - 1 + P, D] -> the P positions of every row, flattened to [N * P]."""
        return self._to_numpy(*self._initial_sequence_call(np.asarray(frames, np.float32)))

    def recurrent_inference(self, state: tuple, actions: np.ndarray) -> GaussianOutput:
        """(state, actions [B, A]) -> next state, reward [B], value [B], μ and σ [B, A]."""
        return self._to_numpy(*self._recurrent_call(tuple(state),
                                                    np.asarray(actions, np.float32)))

    # --- weights ----------------------------------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        return [v for block in self.blocks.values() for v in block.trainable_weights]

    @property
    def variables(self) -> list:
        """Every variable, the observation normaliser and BatchNorm statistics included."""
        return [v for block in self.blocks.values() for v in block.weights]

    def parameter_counts(self) -> dict:
        """Trainable parameters per block."""
        return {name: int(sum(np.prod(v.shape) for v in block.trainable_variables))
                for name, block in self.blocks.items()}


def build_network(config: Config, spec):
    """The network of an env (an envs.EnvSpec): StateNet for continuous actions, else
    EfficientZeroNet."""
    if spec.action_dims:
        return StateNet(config, spec.observation_shape, spec.action_dims)
    return EfficientZeroNet(config, spec.observation_shape, spec.num_actions)
