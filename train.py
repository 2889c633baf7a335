"""EfficientZero V2 training: self-play, reanalysis, the compiled update, evaluation, checkpoints.

One process, read top to bottom:
    envs (num_envs, lockstep) -> self-play Gumbel search (mcts.py, blog topic ①) -> replay buffer
    buffer.sample -> reanalysis with the target model (policy targets, SVE / TD values) -> update
    update: unroll K steps of the dynamics, value-prefix / policy / value cross-entropies and the
            SimSiam consistency loss (blog topic ②), importance weights, SGD -> new priorities
One update per env step after `start_transitions`, then `offline_updates` on the fixed buffer.
The self-play model is refreshed every `selfplay_update_interval` updates, the target model every
`target_update_interval`; evaluation every `eval_interval`, an atomic checkpoint every
`checkpoint_interval` (checkpoints.py).

    python train.py                                   # Breakout, Atari 100K, full EZ V2 settings
    python train.py --config smoke                    # a one-minute end-to-end run
    python train.py --env CartPole-v1 --config classic
    python train.py --config minatar --env MinAtar/Asterix-v1
    python train.py --resume runs/<run>               # continue from the newest checkpoint
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import sys
import time
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import checkpoints  # noqa: E402
import config as config_module  # noqa: E402
from config import Config  # noqa: E402

EXIT_USAGE = 2
EXIT_NON_FINITE = 1
# train.py warns once when more than this share of an update's value targets is outside the support.
CLIPPED_WARNING_FRACTION = 0.01


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit status 2."""


# --- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train EfficientZero V2 (TensorFlow/Keras).")
    parser.add_argument("--config", default="atari100k", choices=sorted(config_module.PRESETS),
                        help="preset: atari100k (full settings), atari1h (reduced, one hour on CPU), "
                             "smoke (one minute), classic (MLP, vector tasks; CartPole-v1), "
                             "acrobot (classic with Acrobot-v1's budget), minatar (MinAtar games, "
                             "an hour on CPU)")
    parser.add_argument("--env", default=None,
                        help="environment: 'Breakout' (default of Atari presets), "
                             "'MinAtar/Asterix-v1' or e.g. CartPole-v1")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--run-dir", default=None,
                        help="run folder (default: runs/<env>-<config>-seed<k>-<timestamp>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest complete checkpoint")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    config = config_module.get_config(args.config)
    overrides = list(args.overrides)
    if args.env is not None:
        overrides.insert(0, f"env_id={args.env}")
    if args.seed is not None:
        overrides.insert(0, f"seed={args.seed}")
    return config_module.apply_overrides(config, overrides)


def default_run_dir(config: Config) -> str:
    env_name = config.env_id.replace("ALE/", "").replace("/", "-")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{env_name}-{config.preset}-seed{config.seed}-{stamp}")


def prepare_run_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as file:
            file.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"cannot write run folder '{path}': {error.strerror or error}") from None


# --- logging: TensorBoard scalars and metrics.csv, one place -------------------------------------

class MetricsLogger:
    """Writes every scalar to TensorBoard and to `metrics.csv` (updates, env_steps, key, value)."""

    def __init__(self, run_dir: str, resumed_updates: int | None = None):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(run_dir)
        path = os.path.join(run_dir, "metrics.csv")
        if resumed_updates is not None and os.path.exists(path):
            # Rows written after the checkpoint we resume from will be logged again: drop them.
            with open(path, newline="") as file:
                rows = list(csv.reader(file))
            kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= resumed_updates]
            with open(path, "w", newline="") as file:
                csv.writer(file).writerows(kept)
        new_file = not os.path.exists(path)
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new_file:
            self._csv.writerow(["updates", "env_steps", "wall_seconds", "key", "value"])
        self._start = time.time()

    def log(self, scalars: dict[str, float], updates: int, env_steps: int) -> None:
        wall = round(time.time() - self._start, 2)
        with self._writer.as_default():
            for key, value in scalars.items():
                self._tf.summary.scalar(key, float(value), step=env_steps)
                self._csv.writerow([updates, env_steps, wall, key, f"{float(value):.6g}"])
        self._file.flush()

    def close(self) -> None:
        self._writer.flush()
        self._file.close()


# --- the learner: losses and the compiled update (EZ V2 losses) -----------------------------------

def learning_rate_at(config: Config, update: int) -> float:
    """Linear warm-up over `warmup_fraction` of all updates, then x`lr_decay_factor` after decay."""
    warmup_updates = max(1, int(config.warmup_fraction * config.total_updates))
    rate = config.learning_rate * min(1.0, (update + 1) / warmup_updates)
    if update >= config.lr_decay_updates:
        rate *= config.lr_decay_factor
    return rate


def use_precision(config: Config) -> bool:
    """Set the Keras dtype policy for `config` before any network is built; returns on_gpu."""
    import keras
    import tensorflow as tf

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    keras.mixed_precision.set_global_policy(precision_policy(config, on_gpu))
    if config.mixed_precision and not on_gpu and not cpu_has_bfloat16():
        print("warning: mixed_precision on a CPU without bfloat16 instructions (AMX or "
              "AVX512-BF16) emulates bfloat16 and is slower than float32", file=sys.stderr)
    return on_gpu


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


class UpdateResult(NamedTuple):
    finite: bool
    priorities: np.ndarray          # [B] |v_hat_t - z_t| + epsilon
    scalars: dict[str, float]       # losses/*, targets/* for logging


class Learner:
    """The online network, its SGD optimiser and the `tf.function` update step."""

    def __init__(self, config: Config, net, observation_shape: tuple, num_actions: int):
        import keras
        import tensorflow as tf

        from networks import logits_to_scalar, scalar_to_two_hot, scalar_transform, stack_frames

        self.config, self.net, self.num_actions = config, net, num_actions
        self._tf = tf
        self._stack = lambda frames: stack_frames(frames, config.frame_stack)
        self._two_hot = lambda x: scalar_to_two_hot(x, config.support_size)
        self._to_scalar = lambda logits: logits_to_scalar(logits, config.support_size)
        self._transform = scalar_transform
        self.optimizer = keras.optimizers.SGD(learning_rate=config.learning_rate,
                                              momentum=config.momentum)
        self.optimizer.build(net.trainable_variables)
        self.augment_rng = tf.random.Generator.from_seed(config.seed + 1)
        self.is_image = len(observation_shape) == 3
        # float16 compute (mixed precision on a GPU): a dynamic loss scale keeps its gradients
        # finite. bfloat16 (on a CPU) has float32's exponent range and needs no scaling.
        self.dynamic_loss_scale = keras.mixed_precision.global_policy().compute_dtype == "float16"
        self.loss_scale = tf.Variable(2.0 ** 15 if self.dynamic_loss_scale else 1.0,
                                      trainable=False, dtype=tf.float32)
        self._finite_in_a_row = 0
        # BatchNorm moving statistics change during the forward pass; a refused update restores them.
        self._statistics = [v for v in net.variables if not v.trainable]
        self.trace_count = 0                 # Python side effect: runs only when tf traces
        K, A, S = config.unroll_steps, num_actions, config.frame_stack
        obs_dtype = tf.uint8 if self.is_image else tf.float32
        signature = [
            tf.TensorSpec([config.batch_size, S + K, *net.frame_shape], obs_dtype),  # t-S+1..t+K
            tf.TensorSpec([config.batch_size, K], tf.int32),           # actions
            tf.TensorSpec([config.batch_size, K], tf.float32),         # reward (value-prefix) targets
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # value targets
            tf.TensorSpec([config.batch_size, K + 1, A], tf.float32),  # policy targets
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # transition masks
            tf.TensorSpec([config.batch_size, K + 1], tf.float32),     # value masks
            tf.TensorSpec([config.batch_size], tf.float32),            # importance weights
        ]
        self._gradients = tf.function(self._compute_gradients, input_signature=signature)
        self._apply = tf.function(self._apply_gradients)
        self._root_outputs_graph = tf.function(self._root_outputs_both_modes)

    # Random shift (replicate-pad `shift_pad`, random crop) and intensity jitter. The official code
    # augments the online input o_t and the consistency targets o_{t+1..t+K} independently, each
    # sample's targets sharing one transform (they are one stacked tensor there). The shift gathers
    # uint8 rows and columns at clamped indices, which is exactly replicate padding followed by a
    # crop, and costs a quarter of the memory of floats; the intensity factor is applied after
    # preprocessing, one observation at a time.
    def _augment(self, observations):
        """uint8 [B, P, H, W, C] -> (shifted uint8 [B, P, H, W, C], intensity [B, 1, 1, 1]): one
        shift and one intensity factor per sample, shared by its P observations."""
        tf = self._tf
        batch, _, height, width, _ = observations.shape
        pad = self.config.shift_pad
        shifts = self.augment_rng.uniform([batch, 2], -pad, pad + 1, dtype=tf.int32)  # (dy, dx)
        rows = tf.clip_by_value(tf.range(height)[None] + shifts[:, :1], 0, height - 1)  # [B, H]
        columns = tf.clip_by_value(tf.range(width)[None] + shifts[:, 1:], 0, width - 1)  # [B, W]
        shifted = tf.gather(observations, rows, axis=2, batch_dims=1)
        shifted = tf.gather(shifted, columns, axis=3, batch_dims=1)
        noise = tf.clip_by_value(self.augment_rng.normal([batch, 1, 1, 1]), -2.0, 2.0)
        return shifted, 1.0 + self.config.intensity_sigma * noise

    def _network_inputs(self, frames):
        """Single frames [B, S+K, *frame] -> a function k -> float32 network input of o_{t+k} [B, *obs],
        augmented (images, `augmentation`): o_t with one draw, o_{t+1..t+K} with another."""
        net = self.net
        observations = self._stack(frames)                              # [B, K+1, ...] as stored
        if not (self.is_image and self.config.augmentation):
            return lambda k: net.preprocess(observations[:, k])
        online, online_intensity = self._augment(observations[:, :1])
        targets, target_intensity = self._augment(observations[:, 1:])

        def inputs_at(k):
            if k == 0:
                return net.preprocess(online[:, 0]) * online_intensity
            return net.preprocess(targets[:, k - 1]) * target_intensity
        return inputs_at

    def _compute_gradients(self, frames, actions, reward_targets, value_targets,
                           policy_targets, transition_masks, value_masks, weights):
        """The EfficientZero V2 loss of one batch and its gradients (EfficientZero V2).

        Unroll step k = 1..K predicts o_{t+k} from a_{t+k-1}: its value-prefix and consistency losses
        count while that action is real (transition_masks[:, k-1]); the policy loss at position k
        while o_{t+k} has an acting policy (transition_masks[:, k]); the value loss at k where
        value_masks[:, k] (a terminal o_T's absorbing 0 included, a truncated o_T excluded)."""
        tf, config, net = self._tf, self.config, self.net
        self.trace_count += 1
        K = config.unroll_steps
        batch = config.batch_size
        smoothing = config.policy_target_smoothing
        if smoothing > 0:
            policy_targets = (1.0 - smoothing) * policy_targets + smoothing / self.num_actions
        inputs_at = self._network_inputs(frames)

        # SimSiam targets: stop-gradient projections of the real observations t+1..t+K, one call
        # per step k as the official code does (BatchNorm statistics per step; peak memory of B
        # observations, not B·K).
        target_projection = [
            tf.stop_gradient(net.project(net.represent(inputs_at(k), training=True), training=True))
            for k in range(1, K + 1)]                                    # K x [B, projection]

        def cross_entropy(logits, target_probs):
            return -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits), axis=-1)   # [B]

        def policy_entropy(logits):
            return -tf.reduce_sum(tf.nn.softmax(logits) * tf.nn.log_softmax(logits), axis=-1)  # [B]

        def negative_cosine(prediction, target):
            return -tf.reduce_sum(tf.math.l2_normalize(prediction, axis=-1)
                                  * tf.math.l2_normalize(target, axis=-1), axis=-1)  # [B]

        with tf.GradientTape() as tape:
            latent = net.represent(inputs_at(0), training=True)
            value_logits, policy_logits = net.predict(latent, training=True)
            predicted_root_value = self._to_scalar(value_logits)           # [B], for priorities
            value_loss = cross_entropy(value_logits, self._two_hot(value_targets[:, 0])) \
                * value_masks[:, 0]
            policy_loss = cross_entropy(policy_logits, policy_targets[:, 0]) * transition_masks[:, 0]
            entropy = policy_entropy(policy_logits) * transition_masks[:, 0]
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
                prediction = net.predict_projection(net.project(latent, training=True),
                                                    training=True)
                step_is_real = transition_masks[:, k - 1]
                consistency_loss += negative_cosine(prediction, target_projection[k - 1]) \
                    * step_is_real
                reward_loss += cross_entropy(reward_logits, self._two_hot(reward_targets[:, k - 1])) \
                    * step_is_real
                value_loss += cross_entropy(value_logits, self._two_hot(value_targets[:, k])) \
                    * value_masks[:, k]
                policy_loss += cross_entropy(policy_logits, policy_targets[:, k]) \
                    * transition_masks[:, k]
                entropy += policy_entropy(policy_logits) * transition_masks[:, k]
            per_sample = (config.reward_loss_coeff * reward_loss
                          + config.policy_loss_coeff * policy_loss
                          + config.value_loss_coeff * value_loss
                          + config.consistency_loss_coeff * consistency_loss
                          - config.entropy_loss_coeff * entropy)
            loss = tf.reduce_mean(weights * per_sample) / K
            scaled_loss = loss * self.loss_scale
        gradients = tape.gradient(scaled_loss, net.trainable_variables)
        gradients = [g / self.loss_scale for g in gradients]
        gradients, grad_norm = tf.clip_by_global_norm(gradients, config.max_grad_norm)
        priorities = tf.abs(predicted_root_value - value_targets[:, 0]) + config.priority_epsilon
        # Value targets beyond the categorical support are clipped by the two-hot encoding.
        clipped = tf.cast(tf.abs(self._transform(value_targets)) > config.support_size, tf.float32)
        scalars = {
            "losses/total": loss,
            "losses/reward": tf.reduce_mean(reward_loss) / K,
            "losses/policy": tf.reduce_mean(policy_loss) / K,
            "losses/value": tf.reduce_mean(value_loss) / K,
            "losses/consistency": tf.reduce_mean(consistency_loss) / K,
            "losses/policy_entropy": tf.reduce_mean(entropy) / K,
            "losses/grad_norm": grad_norm,
            "targets/mean_value_target": tf.reduce_mean(value_targets[:, 0]),
            "targets/clipped_fraction": tf.reduce_sum(clipped * value_masks)
                                        / tf.maximum(tf.reduce_sum(value_masks), 1.0),
            "targets/max_abs_value_target": tf.reduce_max(tf.abs(value_targets) * value_masks),
            "targets/mean_predicted_value": tf.reduce_mean(predicted_root_value),
        }
        return gradients, priorities, scalars

    def _root_outputs_both_modes(self, frames):
        """Root frames [B, S, *frame] -> value [B] and policy logits [B, A] of o_t in inference mode,
        then in training mode (which moves BatchNorm's statistics: the caller restores them)."""
        net = self.net
        inputs = net.preprocess(self._stack(frames)[:, 0])
        outputs = []
        for training in (False, True):
            value_logits, policy_logits = net.predict(net.represent(inputs, training=training),
                                                      training=training)
            outputs += [self._to_scalar(value_logits), policy_logits]
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
        # SGD weight decay as in PyTorch: g + wd * w, added after clipping.
        decayed = [g + self.config.weight_decay * v for g, v in zip(gradients, variables)]
        self.optimizer.apply_gradients(zip(decayed, variables))

    def update(self, batch, targets, update_index: int) -> UpdateResult:
        statistics = [v.numpy() for v in self._statistics]
        gradients, priorities, scalars = self._gradients(
            batch.frames[:, :self.config.frame_stack + self.config.unroll_steps],
            batch.actions.astype(np.int32),
            batch.reward_targets.astype(np.float32), targets.values.astype(np.float32),
            targets.policies.astype(np.float32), batch.transition_masks.astype(np.float32),
            batch.value_masks.astype(np.float32), batch.importance_weights.astype(np.float32))
        scalars = {key: float(value) for key, value in scalars.items()}
        finite = math.isfinite(scalars["losses/total"]) and math.isfinite(scalars["losses/grad_norm"])
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
        rate = learning_rate_at(self.config, update_index)
        self.optimizer.learning_rate = rate
        self._apply(gradients)
        if self.dynamic_loss_scale:
            self._finite_in_a_row += 1
            if self._finite_in_a_row % 2000 == 0:
                self.loss_scale.assign(min(2.0 ** 24, float(self.loss_scale) * 2))
        scalars["losses/lr"] = rate
        return UpdateResult(True, priorities.numpy(), scalars)

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


# --- the run --------------------------------------------------------------------------------------

class Trainer:
    """Owns envs, models, buffer and counters; `run()` is the whole training job."""

    def __init__(self, config: Config, run_dir: str, resume_from: checkpoints.Checkpoint | None):
        import keras
        import tensorflow as tf

        import envs
        from buffer import ReplayBuffer
        from networks import EfficientZeroNet

        on_gpu = use_precision(config)
        keras.utils.set_random_seed(config.seed)
        if not on_gpu:
            # Same seed, same run on CPU; GPUs lack deterministic kernels for some ops, so there
            # the run is reproducible only in distribution.
            tf.config.experimental.enable_op_determinism()
        self.config, self.run_dir = config, run_dir
        self.spec = envs.env_spec(config.env_id, config)
        shape, actions = self.spec.observation_shape, self.spec.num_actions
        self.online = EfficientZeroNet(config, shape, actions)
        self.selfplay_model = EfficientZeroNet(config, shape, actions)
        self.target_model = EfficientZeroNet(config, shape, actions)
        self.learner = Learner(config, self.online, shape, actions)
        self.rng = np.random.default_rng(config.seed)
        self.env_steps = self.updates = self.games = 0
        self.best_eval: float | None = None
        self.last_eval: float | None = None
        self.buffer = ReplayBuffer(config, self.spec.frame_shape, self.spec.frame_dtype, actions,
                                   config.num_envs)
        if resume_from is not None:
            self._restore(resume_from)
        else:
            weights = self.online.get_weights()
            self.selfplay_model.set_weights(weights)
            self.target_model.set_weights(weights)
        self.envs = [envs.make_env(config.env_id, config.seed + 1000 * self.games + i, True, config)
                     for i in range(config.num_envs)]
        self.stacker = envs.FrameStacker(config.num_envs, self.spec.frame_shape, config.frame_stack,
                                         self.spec.frame_dtype)
        self.logger = MetricsLogger(run_dir, self.updates if resume_from is not None else None)
        self.recent_returns: list[float] = []
        self.warned_clipping = False
        # Root frames of the first logged batch: the fixed batch of diagnostics/bn_*_gap.
        self.fixed_frames: np.ndarray | None = None

    # -- checkpoints --
    def _restore(self, checkpoint: checkpoints.Checkpoint) -> None:
        from buffer import ReplayBuffer

        if checkpoint.buffer_path is None:
            raise checkpoints.CheckpointError(f"checkpoint '{checkpoint.path}' holds no replay "
                                              "buffer, so the run cannot continue exactly")
        for name, model in (("online", self.online), ("selfplay", self.selfplay_model),
                            ("target", self.target_model)):
            checkpoints.check_weights_match(model.get_weights(), checkpoint.arrays[name],
                                            f"{name} weights")
            model.set_weights(checkpoint.arrays[name])
        self.learner.restore(checkpoint.arrays)
        state = checkpoint.state
        self.env_steps, self.updates, self.games = state["env_steps"], state["updates"], state["games"]
        self.best_eval, self.last_eval = state["best_eval"], state["last_eval"]
        self.rng.bit_generator.state = state["numpy_rng"]
        self.buffer = ReplayBuffer.load(checkpoint.buffer_path, self.config)
        print(f"resumed at {self.env_steps} env steps, {self.updates} updates, "
              f"{len(self.buffer)} transitions")

    def save_checkpoint(self) -> str:
        arrays = {"online": self.online.get_weights(), "selfplay": self.selfplay_model.get_weights(),
                  "target": self.target_model.get_weights(), **self.learner.variables_to_save()}
        state = {"env_steps": self.env_steps, "updates": self.updates, "games": self.games,
                 "best_eval": self.best_eval, "last_eval": self.last_eval,
                 "numpy_rng": self.rng.bit_generator.state}
        return checkpoints.save_checkpoint(
            os.path.join(self.run_dir, "checkpoints"), self.updates, arrays, state, self.config,
            self.buffer.save, self.config.keep_checkpoints)

    # -- self-play --
    def start_games(self, env_ids: list[int]) -> None:
        first_frames = []
        for i in env_ids:
            frame, _ = self.envs[i].reset(seed=self.config.seed + 1000 * self.games + i)
            self.stacker.reset(i, frame)
            first_frames.append(frame)
        self.buffer.begin_episodes(np.asarray(env_ids), np.stack(first_frames))

    def selfplay_step(self) -> float:
        """One lockstep step of all envs, acting by Gumbel search; returns the search seconds."""
        from evaluate import search_actions

        config = self.config
        start = time.perf_counter()
        search = search_actions(self.selfplay_model, self.stacker.observations(), config,
                                self.rng, config.gumbel_scale)
        search_seconds = time.perf_counter() - start
        count = config.num_envs
        rewards = np.zeros(count, np.float32)
        terminated = np.zeros(count, bool)
        truncated = np.zeros(count, bool)
        next_frames = []
        for i, env in enumerate(self.envs):
            frame, reward, terminated[i], truncated[i], info = env.step(int(search.action[i]))
            rewards[i] = reward
            next_frames.append(frame)
            if "game_return" in info:
                self.games += 1
                self.recent_returns = (self.recent_returns + [info["game_return"]])[-10:]
                self.logger.log({"charts/episode_return": info["game_return"],
                                 "charts/episode_length": info["game_length"]},
                                self.updates, self.env_steps + i + 1)
        self.buffer.add_step(search.action, rewards, np.stack(next_frames), terminated, truncated,
                             search.root_value, search.improved_policy, self.env_steps)
        self.env_steps += count
        ended = [i for i in range(count) if terminated[i] or truncated[i]]
        for i in range(count):
            if i not in ended:
                self.stacker.push(i, next_frames[i])
        if ended:
            self.start_games(ended)
        return search_seconds

    # -- learning --
    def train_step(self) -> bool:
        """Sample, reanalyse, update once; returns False if the loss was not finite."""
        from buffer import reanalyze

        config = self.config
        start = time.perf_counter()
        batch = self.buffer.sample(config.batch_size, self.rng)
        sampled = time.perf_counter()
        targets = reanalyze(batch, self.target_model, config=config, train_step=self.updates,
                            rng=self.rng)
        reanalysed = time.perf_counter()
        result = self.learner.update(batch, targets, self.updates)
        done = time.perf_counter()
        if not result.finite:
            self.logger.log({"losses/non_finite_update": self.updates}, self.updates, self.env_steps)
            return False
        self.buffer.update_priorities(batch.indices, result.priorities)
        self.updates += 1
        if self.updates % config.selfplay_update_interval == 0:
            self.selfplay_model.set_weights(self.online.get_weights())
        if self.updates % config.target_update_interval == 0:
            self.target_model.set_weights(self.online.get_weights())
        if result.scalars["targets/clipped_fraction"] > CLIPPED_WARNING_FRACTION \
                and not self.warned_clipping:
            self.warned_clipping = True
            from networks import support_size_for

            largest = result.scalars["targets/max_abs_value_target"]
            print(f"warning: {result.scalars['targets/clipped_fraction']:.1%} of the value targets "
                  f"lie outside the support (support_size={config.support_size}); the largest, "
                  f"|{largest:.0f}|, needs --set support_size={support_size_for(largest)}",
                  file=sys.stderr)
        if self.updates % config.log_interval == 0:
            if self.fixed_frames is None:
                self.fixed_frames = batch.frames[:, :config.frame_stack]
            scalars = dict(result.scalars)
            scalars.update(targets.diagnostics)
            scalars.update(self.learner.normalization_gap(self.fixed_frames))
            scalars["targets/sve_fraction"] = targets.sve_fraction
            scalars["perf/sample_ms"] = 1000 * (sampled - start)
            scalars["perf/reanalyze_ms"] = 1000 * (reanalysed - sampled)
            scalars["perf/reanalyze_tree_ms"] = 1000 * targets.tree_seconds
            scalars["perf/update_ms"] = 1000 * (done - reanalysed)
            self.logger.log(scalars, self.updates, self.env_steps)
        return True

    def evaluate(self) -> None:
        from evaluate import play_episodes, summarize

        start = time.perf_counter()
        result = play_episodes(self.online, self.config, self.config.env_id,
                               self.config.eval_episodes, seed=self.config.seed + 10_000_000)
        summary = summarize(self.config.env_id, result.returns)
        self.last_eval = summary["mean"]
        if self.best_eval is None or summary["mean"] > self.best_eval:
            self.best_eval = summary["mean"]
        scalars = {f"eval/{key}": value for key, value in summary.items()
                   if isinstance(value, float)}
        scalars["eval/best_mean"] = self.best_eval
        scalars["perf/eval_seconds"] = time.perf_counter() - start
        self.logger.log(scalars, self.updates, self.env_steps)
        eval_dir = os.path.join(self.run_dir, "eval")
        os.makedirs(eval_dir, exist_ok=True)
        with open(os.path.join(eval_dir, f"eval-{self.updates:08d}.json"), "w") as file:
            import json
            json.dump({"updates": self.updates, "env_steps": self.env_steps, **summary,
                       "returns": result.returns, "lengths": result.lengths}, file, indent=1)

    def _after_update(self) -> None:
        if self.updates % self.config.eval_interval == 0:
            self.evaluate()
        if self.updates % self.config.checkpoint_interval == 0:
            self.save_checkpoint()

    def _stop_non_finite(self) -> None:
        path = self.save_checkpoint()
        raise FloatingPointError(f"non-finite loss at update {self.updates + 1}: the weights were "
                                 f"left untouched and the last good state saved to {path}")

    def run(self) -> None:
        from tqdm import tqdm

        config = self.config
        self.start_games(list(range(config.num_envs)))
        online_updates = int(math.ceil(max(0, config.env_steps - config.start_transitions)
                                       * config.updates_per_env_step))
        progress = tqdm(total=config.env_steps, initial=min(self.env_steps, config.env_steps),
                        unit="step", desc="self-play", mininterval=1.0, dynamic_ncols=True)
        window_start, window_steps, window_updates = time.perf_counter(), self.env_steps, self.updates
        search_seconds = 0.0
        while self.env_steps < config.env_steps:
            search_seconds += self.selfplay_step()
            progress.update(config.num_envs)
            due = min(online_updates, int(math.ceil(
                max(0, self.env_steps - config.start_transitions) * config.updates_per_env_step)))
            while self.updates < due and len(self.buffer) >= config.start_transitions:
                if not self.train_step():
                    progress.close()
                    self._stop_non_finite()
                self._after_update()
            elapsed = time.perf_counter() - window_start
            if elapsed >= 30.0 or self.env_steps >= config.env_steps:
                steps = self.env_steps - window_steps
                self.logger.log({"perf/env_steps_per_second": steps / elapsed,
                                 "perf/updates_per_second": (self.updates - window_updates) / elapsed,
                                 "perf/search_ms": 1000 * search_seconds / max(1, steps
                                                                               // config.num_envs)},
                                self.updates, self.env_steps)
                window_start, window_steps, window_updates = time.perf_counter(), self.env_steps, \
                    self.updates
                search_seconds = 0.0
            recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"
            progress.set_postfix(updates=self.updates, ret=recent, refresh=False)
        progress.close()
        total = config.total_updates
        progress = tqdm(total=total, initial=self.updates, unit="update", desc="updates",
                        mininterval=1.0, dynamic_ncols=True)
        while self.updates < total:
            if not self.train_step():
                progress.close()
                self._stop_non_finite()
            self._after_update()
            progress.update(1)
        progress.close()
        if self.updates % config.eval_interval != 0:
            self.evaluate()
        if self.updates % config.checkpoint_interval != 0:
            self.save_checkpoint()
        self.logger.close()
        print(f"done: {self.env_steps} env steps, {self.updates} updates; evaluation mean "
              f"{self.last_eval:.2f} (best {self.best_eval:.2f}); run folder {self.run_dir}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume is not None:
            resume_from = checkpoints.load_checkpoint(args.resume)
            config = config_module.apply_overrides(resume_from.config, args.overrides)
            run_dir = args.resume if os.path.isdir(os.path.join(args.resume, "checkpoints")) \
                else os.path.dirname(os.path.dirname(os.path.abspath(resume_from.path)))
        else:
            resume_from = None
            config = build_config(args)
            run_dir = args.run_dir or default_run_dir(config)
        import envs
        envs.env_spec(config.env_id, config)       # unknown env ids fail here, before any work
        prepare_run_dir(run_dir)
        if resume_from is None:
            with open(os.path.join(run_dir, "config.json"), "w") as file:
                file.write(config.to_json())
        print(config_module.describe(config))
        print(f"run folder: {run_dir}" + (f" (resuming from {resume_from.path})" if resume_from
                                          else ""))
        trainer = Trainer(config, run_dir, resume_from)
    except (ValueError, UsageError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        trainer.run()
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
