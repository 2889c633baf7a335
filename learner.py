"""The learner: the EfficientZero V2 losses and the compiled update step (Wang et al. 2024 and
its appendix of training details; blog topic ② for the SimSiam consistency loss).

One update (`Learner.update`) on a sampled batch (buffer.Batch) and its reanalysed targets
(targets.Targets): represent o_t, unroll the dynamics K steps with the batch's actions, and sum per
sample
    value-prefix cross-entropy (steps 1..K)     x reward_loss_coeff
  + policy cross-entropy (positions 0..K)       x policy_loss_coeff
  + value cross-entropy (positions 0..K)        x value_loss_coeff
  + SimSiam negative cosine (steps 1..K)        x consistency_loss_coeff
  - policy entropy (positions 0..K)             x entropy_loss_coeff,
(the value terms at positions 1..K weighted by unrolled_value_weight), masked at episode ends,
weighted by the importance weights, averaged over the batch and divided by K; then gradient
clipping, weight decay, SGD with momentum (or Adam), the learning-rate schedule, and the dynamic
loss scale of float16 training. Also here: the Keras precision policy (float32, or
mixed bfloat16 on a CPU / float16 on a GPU), the update split over several GPUs
(`learner_replicas`, `distribution_strategy`) and the BatchNorm train/inference gap diagnostic.

Shapes: `B` batch, `K` unroll steps, `A` actions, `S` frame_stack.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from typing import NamedTuple

import numpy as np

import checkpoints
from config import Config

# keras and TensorFlow are imported inside the functions that build graphs: train.py imports this
# module at its top and answers --help and usage errors before TensorFlow loads.
# The augmentation generator's seed is config.seed + this (apart from the weight-init seed).
AUGMENT_SEED_OFFSET = 1
# PyTorch's Adam epsilon (Keras defaults to 1e-7; Keras adds it before the bias correction).
TORCH_ADAM_EPSILON = 1e-8


def build_optimizer(config: Config):
    """The Keras optimiser `config.optimizer` names, at `config.learning_rate` (SGD with momentum,
    or Adam with PyTorch's epsilon); weight decay is added to the gradient by the caller."""
    import keras

    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=TORCH_ADAM_EPSILON)


def learning_rate_at(config: Config, updates: int) -> float:
    """The learning rate of the update that follows `updates` done ones: linear warm-up over
    `warmup_fraction` of all updates, then x`lr_decay_factor` once `lr_decay_updates` are done."""
    warmup_updates = max(1, int(config.warmup_fraction * config.total_updates))
    rate = config.learning_rate * min(1.0, (updates + 1) / warmup_updates)
    if updates >= config.lr_decay_updates:
        rate *= config.lr_decay_factor
    return rate


def configure_tensorflow(config: Config) -> bool:
    """Set TensorFlow's thread pools (`intra_op_threads`, `inter_op_threads`) and the Keras dtype
    policy for `config` before any network is built; returns on_gpu. A thread count can only change
    before the process's first TensorFlow operation: later a different count is refused with a
    warning."""
    import keras
    import tensorflow as tf

    threading = tf.config.threading
    for name, get, set_ in (
            ("intra_op_threads", threading.get_intra_op_parallelism_threads,
             threading.set_intra_op_parallelism_threads),
            ("inter_op_threads", threading.get_inter_op_parallelism_threads,
             threading.set_inter_op_parallelism_threads)):
        threads = getattr(config, name)
        if threads and get() != threads:
            try:
                set_(threads)
            except RuntimeError:
                print(f"warning: {name}={threads} ignored: TensorFlow is already running in this "
                      "process with its own thread count", file=sys.stderr)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    keras.mixed_precision.set_global_policy(precision_policy(config, on_gpu))
    if config.mixed_precision and not on_gpu and not cpu_has_bfloat16():
        print("warning: mixed_precision on a CPU without bfloat16 instructions (AMX or "
              "AVX512-BF16) emulates bfloat16 and is slower than float32", file=sys.stderr)
    return on_gpu


def worker_network(config: Config, spec):
    """A network shaped as the trainer's (for the env `spec`, an envs.EnvSpec) in another process:
    a reanalysis child or a Ray actor. TensorFlow is set up as in the trainer (threads, precision,
    deterministic kernels on a CPU); the caller replaces its initial weights."""
    import keras
    import tensorflow as tf

    from networks import build_network

    on_gpu = configure_tensorflow(config)
    keras.utils.set_random_seed(config.seed)
    if not on_gpu:
        tf.config.experimental.enable_op_determinism()
    return build_network(config, spec)


def distribution_strategy(config: Config):
    """None for one learner replica; else a `tf.distribute.MirroredStrategy` over the first
    `learner_replicas` GPUs, or, on a machine without that many, over as many logical CPU devices if
    the process has made them (a test of the code path, no faster than one device)."""
    replicas = config.learner_replicas
    if replicas == 1:
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if len(gpus) >= replicas else tf.config.list_logical_devices("CPU")
    if len(devices) < replicas:
        raise ValueError(f"config key 'learner_replicas' must be at most the GPUs TensorFlow "
                         f"sees ({len(gpus)}), got {replicas}")
    return tf.distribute.MirroredStrategy([device.name for device in devices[:replicas]])


def precision_policy(config: Config, on_gpu: bool) -> str:
    """The Keras dtype policy: float32, or with `mixed_precision` float16 compute on a GPU and
    bfloat16 compute on a CPU (the CPU's matrix units take bfloat16, not float16)."""
    if not config.mixed_precision:
        return "float32"
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


def cpu_has_bfloat16() -> bool:
    """True when /proc/cpuinfo lists bfloat16 matrix instructions (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def machine_description() -> str:
    """The CPU model, its logical cores and matrix units, and any GPU TensorFlow sees, e.g.
    'Intel(R) Xeon(R) Processor, 2 cores, AMX' (run folders record it beside their wall times)."""
    import tensorflow as tf

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("model name")]
    parts = [names[0] if names else platform.processor() or platform.machine(),
             f"{os.cpu_count()} cores"]
    if "amx_tile" in text:
        parts.append("AMX")
    elif "avx512_bf16" in text:
        parts.append("AVX512-BF16")
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return ", ".join(parts + [f"GPU {name}" for name in gpus])


# --- continuous control: the squashed-Gaussian policy's losses (official ez/utils/loss.py) -------

def squashed_log_prob(mean, std, actions):
    """log π_θ(a) of tanh(Normal(μ, σ)), summed over the action dimensions: mean, std [B, A],
    actions [..., B, A] in (−1, 1) -> [..., B]."""
    import tensorflow as tf

    from networks import squashed_gaussian

    return tf.reduce_sum(squashed_gaussian(mean, std).log_prob(actions), axis=-1)


def continuous_policy_loss(mean, std, candidates, improved_policy, acted, *, full: bool,
                           clip: float):
    """The per-sample policy loss [B] of π_θ = tanh(Normal(μ, σ)) (official `continuous_loss`).
    With `full` (the official code's choice for one action dimension; the paper's Eq. 6) the
    cross-entropy −Σ_k π′_k log π_θ(a_k) over the K searched candidates [B, K, A] and their
    improved policy π′ [B, K]; else (Eq. 7, the simple loss of Gumbel MuZero) −log π_θ(a*) of the
    acted candidate a* [B, A], clipped to ±clip."""
    import tensorflow as tf

    if full:
        log_prob = squashed_log_prob(mean, std, tf.transpose(candidates, [1, 0, 2]))   # [K, B]
        return -tf.reduce_sum(tf.transpose(improved_policy) * log_prob, axis=0)
    return -squashed_log_prob(mean, std, tf.clip_by_value(acted, -clip, clip))


def squashed_entropy(mean, std, noise, clip: float):
    """A Monte Carlo estimate [B] of π_θ's entropy, which has no closed form once squashed:
    −mean_n log π_θ(a_n), a_n = clip(tanh(μ + σ ε_n)) for noise ε [N, B, A] (the official 1,024
    draws), the gradient flowing through the draws."""
    import tensorflow as tf

    actions = tf.clip_by_value(tf.tanh(mean + std * noise), -clip, clip)
    return -tf.reduce_mean(squashed_log_prob(mean, std, actions), axis=0)


def strategy_scope(strategy):
    """The scope of a `distribution_strategy` (`learner_replicas` > 1), else no scope."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


class RandomDraws(NamedTuple):
    """An update's draws from the augmentation generator (`Learner._random_draws`)."""
    augmentation: tuple             # images with `augmentation`: online shifts [B, 2] (int32) and
                                    # intensity noise [B, 1, 1, 1], then the targets' two; else ()
    entropy: object                 # continuous actions: [B, K+1, N, D] normal noise of the
                                    # entropy estimate at each position; else ()


class UpdateResult(NamedTuple):
    finite: bool                    # False: a non-finite loss, nothing changed (the run must stop).
                                    # A float16 step skipped for overflowing gradients is finite:
                                    # the loss scale was halved and losses/lr logged as 0
    priorities: np.ndarray          # [B] |v_hat_t - z_t| + epsilon
    scalars: dict[str, float]       # losses/*, targets/* for logging


class Learner:
    """The online network, its optimiser (SGD or Adam) and the `tf.function` update step."""

    def __init__(self, config: Config, net, observation_shape: tuple, num_actions: int,
                 strategy=None):
        import keras
        import tensorflow as tf

        from networks import stack_frames

        self.config, self.net, self.num_actions = config, net, num_actions
        self.action_dims = net.action_dims
        self._tf = tf
        self._stack = lambda frames: stack_frames(frames, config.frame_stack)
        self._value_support, self._reward_support = net.value_support, net.reward_support
        # With `learner_replicas` > 1: a tf.distribute strategy under which `net` was built.
        self.strategy = strategy
        with strategy_scope(strategy):
            self.optimizer = build_optimizer(config)
            self.optimizer.build(net.trainable_variables)
        self.augment_rng = tf.random.Generator.from_seed(config.seed + AUGMENT_SEED_OFFSET)
        self.is_image = len(observation_shape) == 3
        # float16 compute (mixed precision on a GPU): a dynamic loss scale keeps its gradients
        # finite. bfloat16 (on a CPU) has float32's exponent range and needs no scaling.
        self.dynamic_loss_scale = keras.mixed_precision.global_policy().compute_dtype == "float16"
        self.loss_scale = tf.Variable(2.0 ** 15 if self.dynamic_loss_scale else 1.0,
                                      trainable=False, dtype=tf.float32)
        self._finite_in_a_row = 0
        # BatchNorm moving statistics change in the forward pass; a refused update restores them.
        self._statistics = [v for v in net.variables if not v.trainable]
        self.trace_count = 0                 # Python side effect: runs only when tf traces
        K, A, S, B = config.unroll_steps, num_actions, config.frame_stack, config.batch_size
        obs_dtype = tf.uint8 if self.is_image else tf.float32
        if self.action_dims:
            D, C = self.action_dims, config.policy_candidates + config.widened_candidates
            actions = tf.TensorSpec([B, K, D], tf.float32)
            policy_targets = (tf.TensorSpec([B, K + 1, C], tf.float32),      # improved policies
                              tf.TensorSpec([B, K + 1, C, D], tf.float32),   # their candidates
                              tf.TensorSpec([B, K + 1, D], tf.float32))      # the chosen a*
        else:
            actions = tf.TensorSpec([B, K], tf.int32)
            policy_targets = (tf.TensorSpec([B, K + 1, A], tf.float32),)     # improved policies
        signature = [
            tf.TensorSpec([B, S + K, *net.frame_shape], obs_dtype),          # t-S+1..t+K
            actions,
            tf.TensorSpec([config.batch_size, K], tf.float32),         # value-prefix targets
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # value targets
            policy_targets,
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # transition masks
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # value masks
            tf.TensorSpec([config.batch_size], tf.float32),            # importance weights
        ]
        # The traced loss and gradients of one batch (public for bench.preset_flops).
        self.gradients = tf.function(
            self._compute_gradients if strategy is None else self._distributed_gradients,
            input_signature=signature)
        self._apply = tf.function(self._apply_gradients)
        self._root_outputs_graph = tf.function(self._root_outputs_both_modes)

    # Random shift (replicate-pad `shift_pad`, random crop) and intensity jitter. The official code
    # augments the online input o_t and the consistency targets o_{t+1..t+K} independently, each
    # sample's targets sharing one transform (they are one stacked tensor there). The shift gathers
    # uint8 rows and columns at clamped indices, which is exactly replicate padding followed by a
    # crop, and costs a quarter of the memory of floats; the intensity factor is applied after
    # preprocessing, one observation at a time.
    def _random_draws(self, batch: int) -> RandomDraws:
        """The update's draws from the augmentation generator, for a batch of `batch`, in the
        order the loss uses them. They are drawn before the loss, over the whole batch, so that a
        distributed update (`learner_replicas`) uses the numbers a single device does."""
        tf, config = self._tf, self.config
        augmentation = ()
        if self.is_image and config.augmentation:
            augmentation = self._augmentation_draws(batch) + self._augmentation_draws(batch)
        entropy = ()
        if self.action_dims:
            entropy = tf.stack([self.augment_rng.normal([config.entropy_samples, batch,
                                                         self.action_dims])
                                for _ in range(config.unroll_steps + 1)], axis=2)
            entropy = tf.transpose(entropy, [1, 2, 0, 3])                 # [B, K+1, N, D]
        return RandomDraws(augmentation, entropy)

    def _augmentation_draws(self, batch: int) -> tuple:
        """One shift (dy, dx) [B, 2] in [−shift_pad, shift_pad] and one intensity noise
        [B, 1, 1, 1], clipped to ±2, per sample."""
        tf, pad = self._tf, self.config.shift_pad
        shifts = self.augment_rng.uniform([batch, 2], -pad, pad + 1, dtype=tf.int32)
        noise = tf.clip_by_value(self.augment_rng.normal([batch, 1, 1, 1]), -2.0, 2.0)
        return shifts, noise

    def _augment(self, observations, shifts, noise):
        """uint8 [B, P, H, W, C], shifts (dy, dx) [B, 2] and noise [B, 1, 1, 1] -> (shifted uint8
        [B, P, H, W, C], intensity [B, 1, 1, 1]): one shift and one intensity factor per sample,
        shared by its P observations."""
        tf = self._tf
        _, _, height, width, _ = observations.shape
        rows = tf.clip_by_value(tf.range(height)[None] + shifts[:, :1], 0, height - 1)  # [B, H]
        columns = tf.clip_by_value(tf.range(width)[None] + shifts[:, 1:], 0, width - 1)  # [B, W]
        shifted = tf.gather(observations, rows, axis=2, batch_dims=1)
        shifted = tf.gather(shifted, columns, axis=3, batch_dims=1)
        return shifted, 1.0 + self.config.intensity_sigma * noise

    def _network_inputs(self, frames, augmentation: tuple):
        """Single frames [B, S+K, *frame] -> a function k -> float32 network input of o_{t+k}
        [B, *obs], augmented (images, `augmentation`): o_t with one draw, o_{t+1..t+K} with
        another (`RandomDraws.augmentation`)."""
        net = self.net
        observations = self._stack(frames)                              # [B, K+1, ...] as stored
        if not augmentation:
            return lambda k: net.preprocess(observations[:, k])
        online_shifts, online_noise, target_shifts, target_noise = augmentation
        online, online_intensity = self._augment(observations[:, :1], online_shifts, online_noise)
        targets, target_intensity = self._augment(observations[:, 1:], target_shifts,
                                                  target_noise)

        def inputs_at(k):
            if k == 0:
                return net.preprocess(online[:, 0]) * online_intensity
            return net.preprocess(targets[:, k - 1]) * target_intensity
        return inputs_at

    def _policy_terms(self, policy_output, policy_targets, k: int, entropy_noise):
        """The policy loss [B] and the policy's entropy [B] at position k: the cross-entropy to
        the improved policy over all actions and the softmax's entropy; for continuous actions
        (policy_output the head's raw [B, 2A]) the loss of Eq. 6 or 7 and a Monte Carlo entropy."""
        tf, config = self._tf, self.config
        if not self.action_dims:
            targets = policy_targets[0][:, k]
            if config.policy_target_smoothing > 0:
                targets = ((1.0 - config.policy_target_smoothing) * targets
                           + config.policy_target_smoothing / self.num_actions)
            log_policy = tf.nn.log_softmax(policy_output)
            return (-tf.reduce_sum(targets * log_policy, axis=-1),
                    -tf.reduce_sum(tf.exp(log_policy) * log_policy, axis=-1))
        from networks import policy_parameters

        improved, candidates, best = (t[:, k] for t in policy_targets)
        mean, std = policy_parameters(policy_output, config)
        loss = continuous_policy_loss(mean, std, candidates, improved, best,
                                      full=config.full_policy_loss(self.action_dims),
                                      clip=config.action_clip)
        noise = tf.transpose(entropy_noise[:, k], [1, 0, 2])              # [N, B, D]
        return loss, squashed_entropy(mean, std, noise, config.action_clip)

    def _compute_gradients(self, frames, actions, reward_targets, value_targets,
                           policy_targets, transition_masks, value_masks, weights):
        """The EfficientZero V2 loss of one batch and its gradients on one device: (gradients,
        priorities [B], scalars)."""
        self.trace_count += 1
        draws = self._random_draws(self.config.batch_size)
        return self._loss_and_gradients(frames, actions, reward_targets, value_targets,
                                        policy_targets, transition_masks, value_masks, weights,
                                        draws)

    def _distributed_gradients(self, *inputs):
        """`_compute_gradients` split over the strategy's R replicas (`learner_replicas`): the
        random draws are made here for the whole batch, replica i takes samples
        [i B/R, (i+1) B/R) of every input, and the replicas' gradients and loss sums are
        all-reduced before the gradients are clipped."""
        tf = self._tf
        self.trace_count += 1
        replicas = self.strategy.num_replicas_in_sync
        share = self.config.batch_size // replicas

        def replica_step(*replica_inputs):
            index = tf.get_static_value(
                tf.distribute.get_replica_context().replica_id_in_sync_group)
            own = tf.nest.map_structure(lambda x: x[index * share:(index + 1) * share],
                                        replica_inputs)
            return self._loss_and_gradients(*own)

        gradients, priorities, scalars = self.strategy.run(
            replica_step, args=(*inputs, self._random_draws(self.config.batch_size)))
        first = lambda value: self.strategy.experimental_local_results(value)[0]  # noqa: E731
        return (tf.nest.map_structure(first, gradients),
                tf.concat(self.strategy.experimental_local_results(priorities), axis=0),
                tf.nest.map_structure(first, scalars))

    def _loss_and_gradients(self, frames, actions, reward_targets, value_targets,
                            policy_targets, transition_masks, value_masks, weights,
                            draws: RandomDraws):
        """The EfficientZero V2 loss of one batch and its gradients (EfficientZero V2), on this
        replica's part of the batch when the update is distributed.

        Unroll step k = 1..K predicts o_{t+k} from a_{t+k-1}: its value-prefix and consistency
        losses count while that action is real (transition_masks[:, k-1]); the policy loss at
        position k while o_{t+k} has an acting policy (transition_masks[:, k]); the value loss at k
        where value_masks[:, k] (a terminal o_T's
        absorbing 0 included, a truncated o_T excluded)."""
        from networks import replicas

        tf, config, net = self._tf, self.config, self.net
        K = config.unroll_steps
        batch = frames.shape[0]                             # this replica's share of batch_size
        value_support, reward_support = self._value_support, self._reward_support
        inputs_at = self._network_inputs(frames, draws.augmentation)
        context = tf.distribute.get_replica_context()
        distributed = replicas() > 1

        def across_replicas(value):
            """The sum of `value` over the replicas."""
            return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if distributed else value

        def largest(value):
            """The largest of a scalar `value` over the replicas."""
            return tf.reduce_max(context.all_gather(value[None], axis=0)) if distributed \
                else value

        def batch_mean(x):
            """The mean of x [B, ...] over the whole batch, all replicas' samples included."""
            if not distributed:
                return tf.reduce_mean(x)
            return across_replicas(tf.reduce_sum(x)) / tf.cast(
                config.batch_size * tf.reduce_prod(tf.shape(x)[1:]), x.dtype)

        def cross_entropy(logits, target_probs):
            return -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits), axis=-1)   # [B]

        def negative_cosine(prediction, target):
            return -tf.reduce_sum(tf.math.l2_normalize(prediction, axis=-1)
                                  * tf.math.l2_normalize(target, axis=-1), axis=-1)  # [B]

        with tf.GradientTape() as tape:
            latent = net.represent(inputs_at(0), training=True)
            value_logits, policy_logits = net.predict(latent, training=True)
            predicted_root_value = value_support.to_scalar(value_logits)   # [B], for priorities
            value_loss = cross_entropy(value_logits, value_support.two_hot(value_targets[:, 0])) \
                * value_masks[:, 0]
            policy_loss, entropy = self._policy_terms(policy_logits, policy_targets, 0,
                                                      draws.entropy)
            policy_loss *= transition_masks[:, 0]
            entropy *= transition_masks[:, 0]
            reward_loss = tf.zeros([batch])
            consistency_loss = tf.zeros([batch])
            lstm_state = net.initial_lstm_state(batch)
            for k in range(1, K + 1):
                # The gradient into every unrolled state is halved (the official hook on the state),
                # so what this step's own heads send back is halved too.
                latent, reward_logits, lstm_state = net.dynamics(
                    latent, actions[:, k - 1], lstm_state, training=True,
                    state_gradient_scale=config.state_gradient_scale)
                if k % config.lstm_horizon_len == 0:       # the value prefix restarts here
                    lstm_state = net.initial_lstm_state(batch)
                value_logits, policy_logits = net.predict(latent, training=True)
                # SimSiam: the real observation t+k is represented after this step's dynamics and
                # its projection taken after the unrolled state's, unrecorded, one call per step:
                # the official order, which the normalisers' statistics (BatchNorm; the
                # observation normaliser of StateNet) follow.
                with tape.stop_recording():
                    real_latent = net.represent(inputs_at(k), training=True)
                prediction = net.predict_projection(net.project(latent, training=True),
                                                    training=True)
                with tape.stop_recording():
                    target_projection = tf.stop_gradient(net.project(real_latent, training=True))
                step_is_real = transition_masks[:, k - 1]
                consistency_loss += negative_cosine(prediction, target_projection) * step_is_real
                reward_loss += cross_entropy(reward_logits,
                                             reward_support.two_hot(reward_targets[:, k - 1])) \
                    * step_is_real
                value_loss += cross_entropy(value_logits,
                                            value_support.two_hot(value_targets[:, k])) \
                    * value_masks[:, k] * config.unrolled_value_weight
                step_policy_loss, step_entropy = self._policy_terms(policy_logits,
                                                                    policy_targets, k,
                                                                    draws.entropy)
                policy_loss += step_policy_loss * transition_masks[:, k]
                entropy += step_entropy * transition_masks[:, k]
            per_sample = (config.reward_loss_coeff * reward_loss
                          + config.policy_loss_coeff * policy_loss
                          + config.value_loss_coeff * value_loss
                          + config.consistency_loss_coeff * consistency_loss
                          - config.entropy_loss_coeff * entropy)
            if distributed:             # this replica's share of the mean over the whole batch
                loss = tf.reduce_sum(weights * per_sample) / (config.batch_size * K)
            else:
                loss = tf.reduce_mean(weights * per_sample) / K
            scaled_loss = loss * self.loss_scale
        gradients = across_replicas(tape.gradient(scaled_loss, net.trainable_variables))
        loss = across_replicas(loss)
        gradients = [g / self.loss_scale for g in gradients]
        gradients, grad_norm = tf.clip_by_global_norm(gradients, config.max_grad_norm)
        priorities = tf.abs(predicted_root_value - value_targets[:, 0]) + config.priority_epsilon
        # Value targets beyond the categorical support are clipped by the two-hot encoding.
        clipped = tf.cast(tf.abs(value_targets) > value_support.bound, tf.float32)
        masked_targets = across_replicas(tf.reduce_sum(value_masks))
        scalars = {
            "losses/total": loss,
            "losses/reward": batch_mean(reward_loss) / K,
            "losses/policy": batch_mean(policy_loss) / K,
            "losses/value": batch_mean(value_loss) / K,
            "losses/consistency": batch_mean(consistency_loss) / K,
            "losses/policy_entropy": batch_mean(entropy) / K,
            "losses/grad_norm": grad_norm,
            "targets/mean_value_target": batch_mean(value_targets[:, 0]),
            "targets/clipped_fraction": across_replicas(tf.reduce_sum(clipped * value_masks))
                                        / tf.maximum(masked_targets, 1.0),
            "targets/max_abs_value_target": largest(tf.reduce_max(tf.abs(value_targets)
                                                                  * value_masks)),
            "targets/mean_predicted_value": batch_mean(predicted_root_value),
        }
        return gradients, priorities, scalars

    def _root_outputs_both_modes(self, frames):
        """Root frames [B, S, *frame] -> value [B] and policy logits [B, A] of o_t in inference
        mode, then in training mode (which moves
        BatchNorm's statistics: the caller restores them)."""
        net = self.net
        inputs = net.preprocess(self._stack(frames)[:, 0])
        outputs = []
        for training in (False, True):
            value_logits, policy_logits = net.predict(net.represent(inputs, training=training),
                                                      training=training)
            outputs += [self._value_support.to_scalar(value_logits), policy_logits]
        return outputs

    def normalization_gap(self, frames: np.ndarray) -> dict[str, float]:
        """How far inference (BatchNorm's moving statistics) is from training (batch statistics) at
        the roots of a fixed batch: mean |Δ policy logit| and mean |Δ value|; 0 with GroupNorm.
        The training-mode pass leaves the moving statistics as they were."""
        statistics = [v.numpy() for v in self._statistics]
        value_infer, logits_infer, value_train, logits_train = (
            x.numpy() for x in self._root_outputs_graph(frames))
        for variable, value in zip(self._statistics, statistics):
            variable.assign(value)
        return {"diagnostics/bn_logit_gap": float(np.abs(logits_train - logits_infer).mean()),
                "diagnostics/bn_value_gap": float(np.abs(value_train - value_infer).mean())}

    def _apply_gradients(self, gradients):
        variables = self.net.trainable_variables
        # Weight decay as PyTorch's SGD and Adam apply it: g + wd * w, added after clipping.
        decayed = [g + self.config.weight_decay * v for g, v in zip(gradients, variables)]
        self.optimizer.apply_gradients(zip(decayed, variables))

    def update(self, batch, targets, updates: int) -> UpdateResult:
        statistics = [v.numpy() for v in self._statistics]
        gradients, priorities, scalars = self.gradients(
            batch.frames[:, :self.config.frame_stack + self.config.unroll_steps],
            batch.actions.astype(np.float32 if self.action_dims else np.int32),
            batch.reward_targets.astype(np.float32),
            targets.values.astype(np.float32), self._policy_targets(targets),
            batch.transition_masks.astype(np.float32),
            batch.value_masks.astype(np.float32), batch.importance_weights.astype(np.float32))
        scalars = {key: float(value) for key, value in scalars.items()}
        finite = (math.isfinite(scalars["losses/total"])
                  and math.isfinite(scalars["losses/grad_norm"]))
        if not finite:
            for variable, value in zip(self._statistics, statistics):
                variable.assign(value)
        if not finite and self.dynamic_loss_scale and math.isfinite(scalars["losses/total"]):
            # Overflowing float16 gradients: skip this step and lower the loss scale.
            self.loss_scale.assign(max(1.0, float(self.loss_scale) / 2))
            self._finite_in_a_row = 0
            scalars["losses/lr"] = 0.0
            return UpdateResult(True, priorities.numpy(), scalars)
        if not finite:
            return UpdateResult(False, priorities.numpy(), scalars)
        rate = learning_rate_at(self.config, updates)
        self.optimizer.learning_rate = rate
        # Outside the strategy's scope Keras applies the gradients to every replica's copy of the
        # variables as given (inside it, it would sum them over the replicas once more).
        self._apply(gradients)
        if self.dynamic_loss_scale:
            self._finite_in_a_row += 1
            if self._finite_in_a_row % 2000 == 0:
                self.loss_scale.assign(min(2.0 ** 24, float(self.loss_scale) * 2))
        scalars["losses/lr"] = rate
        return UpdateResult(True, priorities.numpy(), scalars)

    def _policy_targets(self, targets) -> tuple:
        """The policy targets of the update's signature: (improved policies,), and for continuous
        actions their candidates and the chosen actions too."""
        if self.action_dims:
            return (targets.policies.astype(np.float32), targets.candidates.astype(np.float32),
                    targets.best_actions.astype(np.float32))
        return (targets.policies.astype(np.float32),)

    def variables_to_save(self) -> dict[str, list[np.ndarray]]:
        return {"optimizer": [v.numpy() for v in self.optimizer.variables],
                "augment_rng": [self.augment_rng.state.numpy()],
                "loss_scale": [np.array(float(self.loss_scale), np.float32)]}

    def restore(self, arrays: dict[str, list[np.ndarray]]) -> None:
        expected = [v.numpy() for v in self.optimizer.variables]
        checkpoints.check_weights_match(expected, arrays["optimizer"], "optimizer state")
        for variable, value in zip(self.optimizer.variables, arrays["optimizer"]):
            variable.assign(value)
        self.augment_rng.reset(arrays["augment_rng"][0])
        self.loss_scale.assign(float(arrays["loss_scale"][0]))
