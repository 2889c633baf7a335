"""Every hyperparameter of the project, in one frozen dataclass, with presets.

The numbers of `atari100k()` are the full EfficientZero V2 settings for the Atari 100K benchmark
(Wang et al. 2024, Table 7 and the official `ez/config/exp/atari.yaml`). Units are
stated per field: *env steps* are agent steps (one action, = 4 frames on Atari), *frames* are raw
emulator frames, *updates* are gradient steps of the online network, *transitions* are stored env
steps.

Presets are functions: `atari100k()`, `atari_cpu()` (Breakout's 100,000 agent steps with the whole
Atari path at reduced sizes, at most 3 hours on a 2-core CPU), `smoke()` (a one-minute end-to-end
Breakout run on CPU), `classic()` (MLP networks for vector-observation gymnasium tasks such as
CartPole-v1), `acrobot()` (classic with Acrobot-v1's budget), `minatar()` (MinAtar's 10x10 games,
about an hour per 100,000 env steps) and the continuous-control presets `dmc()`, `dmc_cpu()` and
`pendulum()`.
Presets other than `atari100k` change sizes and budgets and, where a CPU-sized run needed it,
algorithm settings; each change is written beside it with its reason. `apply_overrides(config,
["key=value", ...])` type-checks command line overrides; every constructed `Config` is validated, so
a bad value fails with one clear `ValueError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Callable

_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
_DISCOUNT = (lambda v: 0.0 < v <= 1.0, "in (0, 1]")
_ALL_POSITIVE = (lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of values > 0")
_ANY_POSITIVE = (lambda v: all(x > 0 for x in v), "a list of values > 0 (may be empty)")


# What kind of setting a field is: one of the paper's (the default), a switch between the paper's
# behaviour and another one (for ablations and the CPU presets; its doc names which is the paper's),
# or a speed setting, which changes no computed number (xla_inference: only its float rounding).
PAPER, SWITCH, SPEED = "paper", "switch", "speed"
# The gymnasium ids of the Control Suite's tasks begin so (as shimmy registers them).
DMC_PREFIX = "dm_control/"
# Speed settings that are gone; the config.json of an older run may still hold them. They changed no
# number, so a loaded config drops them. reanalysis_process: the pipelined reanalysis in a home-made
# child process, replaced by the Ray actors (ray_reanalysis_actors).
REMOVED_SPEED_KEYS = ("reanalysis_process",)


def _f(text: str, default, rule=None, kind: str = PAPER):
    """A dataclass field with its one-line doc (and unit), an optional (check, allowed) rule and its
    kind (PAPER, SWITCH or SPEED)."""
    check, allowed = rule if rule else (None, "")
    return field(default=default, metadata={"doc": text, "check": check, "allowed": allowed,
                                            "kind": kind})


@dataclass(frozen=True)
class Config:
    # --- run -------------------------------------------------------------------------------------
    preset: str = _f("name of the preset this config started from (informational)", "atari100k")
    env_id: str = _f("environment: an Atari game ('Breakout' or 'ALE/Breakout-v5') or a gymnasium "
                     "vector task id ('CartPole-v1')", "Breakout")
    seed: int = _f("random seed for envs, noise, sampling and weight init (train.py derives the "
                   "self-play games', evaluation games' and augmentation's seeds from it)", 0,
                   _NON_NEGATIVE)

    # --- environment (Atari 100K protocol) ----------------------------------------
    frame_skip: int = _f("frames per agent step, max-pooled over the last two (frames)", 4,
                         _POSITIVE)
    noop_max: int = _f("maximum random no-op actions at episode start (env steps)", 30,
                       _NON_NEGATIVE)
    frame_size: int = _f("side of the square resized Atari frame (pixels)", 96, _POSITIVE)
    grayscale: bool = _f("grayscale Atari frames instead of RGB (the blog's simplification)", False,
                         kind=SWITCH)
    frame_stack: int = _f("number of consecutive frames stacked into one observation", 4, _POSITIVE)
    terminal_on_life_loss: bool = _f("a lost life ends the episode in training (never in "
                                     "evaluation)", True)
    fire_on_life_start: bool = _f(
        "the env presses FIRE when a game starts and after each lost life, in training and in "
        "evaluation, in games that have FIRE (OpenAI baselines' FireResetEnv, extended to lives): "
        "a greedy Breakout agent whose Q cannot tell FIRE from waiting (the cost of waiting is "
        "1 - γ a step) otherwise repeats one action at the serve until the step cap; false = the "
        "official code", False, kind=SWITCH)
    clip_rewards: bool = _f("train on sign-clipped rewards (raw rewards are always logged)", True)
    max_episode_steps: int = _f("episode cap in training (env steps; 3,000 = 12,000 frames)", 3000,
                                _POSITIVE)
    eval_max_episode_steps: int = _f("episode cap in evaluation (env steps; 27,000 = 108K frames)",
                                     27000, _POSITIVE)
    interim_eval_max_episode_steps: int = _f(
        "episode cap of the evaluations during training, all but the last (env steps; 0: "
        "eval_max_episode_steps). The official eval worker has a 3,000-step option 'due to time "
        "limitation': a greedy Breakout agent that never presses FIRE plays to the cap", 0,
        _NON_NEGATIVE, kind=SWITCH)
    action_repeat: int = _f("Control Suite: control steps per agent step, rewards summed "
                            "(dmc2gym's frame_skip in the official code)", 2, _POSITIVE)
    continuous_action_bins: int = _f("0: a gymnasium task's continuous (Box) action, rescaled to "
                                     "[-1, 1]^A, takes the sampled search (EZ V2); n > 0: it is "
                                     "discretised into n evenly spaced values per dimension",
                                     0, _NON_NEGATIVE, kind=SWITCH)

    # --- budget ----------------------------------------------------------------------------------
    env_steps: int = _f("total env steps collected by self-play, summed over envs (env steps)",
                        100_000, _POSITIVE)
    num_envs: int = _f("self-play envs stepped in lockstep, one batched search for all", 4,
                       _POSITIVE)
    start_transitions: int = _f("stored transitions before the first update, counting those of "
                                "games still running (transitions)", 2000, _POSITIVE)
    updates_per_env_step: float = _f("updates per env step after start_transitions (replay ratio)",
                                     1.0, _POSITIVE)
    offline_updates: int = _f("updates run on the fixed buffer after the env-step budget (updates)",
                              20_000, _NON_NEGATIVE)
    replay_capacity: int = _f("replay buffer capacity, split evenly over the envs; each env's "
                              "oldest data go first (transitions)", 100_000, _POSITIVE)
    replay_open_games: bool = _f("a position of a game still being played may be sampled once "
                                 "every step its targets need is stored (the official code's "
                                 "trajectory blocks); false: only after its game ends", True,
                                 kind=SWITCH)
    frame_compression: int = _f("zlib level (1-9) of the replay buffer's frames, 0 stores them "
                                "raw; lossless, Breakout frames shrink ~33x (2.8 GB -> 85 MB at "
                                "100K)", 1, (lambda v: 0 <= v <= 9, "an integer in [0, 9]"),
                                kind=SPEED)

    # --- networks (EZ V2 appendix, network architecture) ------------------------------------------
    network: str = _f("'conv' (Atari residual stack) or 'mlp' (vector observations)", "conv")
    num_channels: int = _f("channels of the latent state (conv); the first conv has half", 64,
                           _POSITIVE)
    num_blocks: int = _f("residual blocks of h after downsampling and of g (conv); of h and of g "
                         "(StateNet)", 1, _POSITIVE)
    downsample: bool = _f("the conv representation shrinks 96x96 frames to 6x6 (Atari); false "
                          "keeps a small grid's size (MinAtar's 10x10)", True, kind=SWITCH)
    reduced_channels: int = _f("channels of the 1x1 convs in the reward/value/policy heads", 16,
                               _POSITIVE)
    action_encoding: str = _f("how the conv dynamics sees the action: 'scalar' (one plane of value "
                              "a/A, the official code) or 'one_hot' (A planes, 1 on plane a); "
                              "either goes through conv1x1, LayerNorm and ReLU",
                              "scalar", kind=SWITCH)
    dynamics_global_channels: int = _f(
        "channels of a global layer at the end of the conv dynamics: conv1x1 to this many, a Dense "
        "over the whole grid, conv1x1 back, added to the state, so one step of g can move what it "
        "sees anywhere on the grid (MinAtar Freeway: a collision sends the chicken to the bottom "
        "row); 0 = none, the paper's g", 0, _NON_NEGATIVE, kind=SWITCH)
    head_hidden_sizes: tuple = _f("hidden layer sizes of the reward/value/policy MLPs", (32,),
                                  _ANY_POSITIVE)
    mlp_hidden_sizes: tuple = _f("hidden sizes of the MLP representation/dynamics (mlp)",
                                 (128, 128), _ALL_POSITIVE)
    mlp_state_size: int = _f("size of the flat latent state (mlp, StateNet)", 64, _POSITIVE)
    residual_hidden_size: int = _f("hidden width of a pre-LN residual block of h and g "
                                   "(StateNet)", 256, _POSITIVE)
    action_embedding_size: int = _f("width of the continuous action's embedding in g "
                                    "(StateNet)", 64, _POSITIVE)
    state_support_bins: int = _f("bins of StateNet's value and reward supports, spaced evenly in "
                                 "h-space (the official DMC supports)", 51, _POSITIVE)
    policy_candidates: int = _f("sampled search: root candidates drawn from the policy π",
                                4, _NON_NEGATIVE)
    widened_candidates: int = _f("sampled search: root candidates drawn from π with σ widened "
                                 "(from π itself in evaluation)", 12, _NON_NEGATIVE)
    candidate_std_widening: float = _f("sampled search: the widened candidates' σ factor (before "
                                       "the tanh)", 3.0, _POSITIVE)
    sampled_children: int = _f("sampled search: children of an interior node, drawn from its π",
                               2, _POSITIVE)
    action_clip: float = _f("continuous actions (candidates, children, stored actions) are "
                            "clipped to ±action_clip", 0.999, _POSITIVE)
    state_value_bound: float = _f("StateNet's value support spans h(−bound) to h(bound) (the "
                                  "official DMC range ±299)", 299.0, _POSITIVE)
    state_reward_bound: float = _f("StateNet's reward support spans h(−bound) to h(bound) (the "
                                   "official DMC range ±2: two control steps of reward ≤ 1)",
                                   2.0, _POSITIVE)
    policy_mean_bound: float = _f("continuous policy: the Gaussian's mean is soft-clamped to this "
                                  "bound, b·tanh(μ/b), before the tanh squashing", 5.0, _POSITIVE)
    policy_std_offset: float = _f("continuous policy: σ = softplus(σ_raw + offset) + min_std, so "
                                  "a fresh head gives softplus(offset) + min_std", 1.0)
    policy_min_std: float = _f("continuous policy: the floor of σ (before squashing)", 0.1,
                               _POSITIVE)
    sampled_prior: str = _f("the sampled search's prior over the root candidates: 'uniform' (the "
                            "official code) or 'corrected' (the paper's variant: log π − log β of "
                            "the proposal β, as the official code computes but does not use); "
                            "with gumbel_scale > 0 the candidates also get Gumbel noise",
                            "uniform", kind=SWITCH)
    continuous_policy_loss: str = _f("continuous policy loss: 'official' (the official code: "
                                     "'full' for one action dimension, 'simple' for more), "
                                     "'full' (Eq. 6: cross-entropy over the searched candidates) "
                                     "or 'simple' (Eq. 7: −log π(a*) of the search's choice)",
                                     "official")
    entropy_samples: int = _f("continuous policy: draws of the Monte Carlo entropy estimate (the "
                              "squashed Gaussian has no closed form)", 1024, _POSITIVE)
    nonnegative_values: bool = _f("decoded values are floored at 0 (the official DMC code, whose "
                                  "returns are never negative); false for tasks with negative "
                                  "returns", False, kind=SWITCH)
    normalization: str = _f("'batch' (BatchNorm, the paper) or 'group' (GroupNorm, the blog)",
                            "batch", kind=SWITCH)
    group_norm_groups: int = _f("groups of GroupNorm when normalization='group'", 8, _POSITIVE,
                                kind=SWITCH)
    batch_renorm: bool = _f("BatchNorm trains on batch statistics corrected toward its moving "
                            "statistics (Batch Renormalization), so inference computes what "
                            "training computes (false: plain BatchNorm, the paper)", True,
                            kind=SWITCH)
    state_norm: bool = _f("min-max scale every hidden state (h's and each step of g's) to [0, 1] "
                          "per sample: MuZero's scaling, the official `model.state_norm` (off in "
                          "its EZ V2 configs)", False, kind=SWITCH)
    value_prefix: bool = _f("predict value prefixes with an LSTM (EZ) instead of per-step rewards",
                            True, kind=SWITCH)
    lstm_hidden_size: int = _f("hidden size of the value-prefix LSTM", 512, _POSITIVE)
    lstm_horizon_len: int = _f("the value prefix and LSTM reset every this many steps (env steps)",
                               5, _POSITIVE)
    support_size: int = _f("the image and classic networks' categorical supports span "
                           "[-support_size, support_size] in h-space", 300, _POSITIVE)
    support_scale: float = _f("their points lie this far apart in h-space, 2·support_size / "
                              "support_scale + 1 of them (official `value_support.scale`; "
                              "Atari 1: the integers)", 1.0, _POSITIVE)
    projection_hidden_size: int = _f("SimSiam projection hidden width", 1024, _POSITIVE)
    projection_output_size: int = _f("SimSiam projection output width", 1024, _POSITIVE)
    prediction_head_hidden_size: int = _f("SimSiam prediction head hidden width", 256, _POSITIVE)

    # --- search (Gumbel MuZero, blog topic 1) ----------------------------------------------------
    num_simulations: int = _f("simulations per search (self-play, evaluation and reanalysis)", 16,
                              _POSITIVE)
    max_num_considered_actions: int = _f("root actions sampled by Gumbel top-k (m); the sampled "
                                         "search keeps min(m, candidates) at first", 4, _POSITIVE)
    c_visit: float = _f("sigma(q) = (c_visit + max N) * c_scale * q", 50.0, _POSITIVE)
    c_scale: float = _f("sigma(q) = (c_visit + max N) * c_scale * q", 0.1, _POSITIVE)
    q_normalization: str = _f("rescaling of Q to [0, 1] in the search: 'tree' (one min/max per "
                              "tree over every backed-up return, the official EZ V2 tree) or "
                              "'node' (per node, mctx and the Gumbel paper)", "tree", kind=SWITCH)
    value_delta_max: float = _f("with q_normalization='tree': floor of the tree's Q range",
                                0.01, _POSITIVE)
    gumbel_scale: float = _f("scale of the root Gumbel noise in self-play (0 = greedy)", 1.0,
                             _NON_NEGATIVE, kind=SWITCH)
    discount: float = _f("per env step discount gamma", 0.997, _DISCOUNT)

    # --- targets (EZ V2: value prefix, SVE, mixed value) ------------------------------------------
    unroll_steps: int = _f("K: dynamics unroll length in training (env steps)", 5, _POSITIVE)
    td_steps: int = _f("n of the n-step TD value target (env steps)", 5, _POSITIVE)
    reanalysis_chunk_size: int = _f("most observations per representation call in reanalysis; "
                                    "bounds peak memory, results unchanged", 512, _POSITIVE,
                                    kind=SPEED)
    pipelined_reanalysis: bool = _f("reanalyse the next batch in a second thread while the "
                                    "learner updates on this one; its priorities then reach the "
                                    "sampler one update late, as in the official asynchronous "
                                    "batch workers", True, kind=SWITCH)
    reanalyze_ratio: float = _f("fraction of policy targets recomputed by a fresh target-model "
                                "search (the rest use the stored acting policy)", 1.0, _FRACTION,
                                kind=SWITCH)
    use_search_value: bool = _f("mixed value targets: SVE after the thresholds below, else TD only",
                                True, kind=SWITCH)
    sve_start_updates: int = _f("T1: TD value targets only while the update count is below this "
                                "(updates)", 30_000, _NON_NEGATIVE)
    td_newest_transitions: int = _f("T2: samples among the newest T2 transitions keep TD targets "
                                    "(transitions)", 5_000, _NON_NEGATIVE)

    # --- losses ----------------------------------------------------------------------------------
    reward_loss_coeff: float = _f("weight of the value-prefix (reward) cross-entropy", 1.0,
                                  _NON_NEGATIVE)
    policy_loss_coeff: float = _f("weight of the policy cross-entropy", 1.0, _NON_NEGATIVE)
    policy_target_smoothing: float = _f("weight of the uniform distribution mixed into every "
                                        "policy target (0 = the paper): bounds the prior's logit "
                                        "gaps",
                                        0.0, _FRACTION, kind=SWITCH)
    value_loss_coeff: float = _f("weight of the value cross-entropy", 0.25, _NON_NEGATIVE)
    unrolled_value_weight: float = _f("weight of the value cross-entropy on g's unrolled states, "
                                      "positions 1..K, beside the root's 1 (1 = the paper; 0 = "
                                      "the root only)", 1.0, _FRACTION, kind=SWITCH)
    consistency_loss_coeff: float = _f("weight of the SimSiam consistency loss (paper: 2.0)", 2.0,
                                       _NON_NEGATIVE)
    entropy_loss_coeff: float = _f("weight of the policy-entropy bonus subtracted from the loss; "
                                   "the official code applies it to DMC and Gym tasks (5e-2 in "
                                   "dmc_state.yaml), not to Atari", 0.0, _NON_NEGATIVE)

    state_gradient_scale: float = _f("the gradient into every unrolled latent state is scaled by "
                                     "this (MuZero, EZ: 0.5)", 0.5, _FRACTION)

    # --- optimisation ----------------------------------------------------------------------------
    batch_size: int = _f("samples per update", 256, _POSITIVE)
    optimizer: str = _f("'sgd' (SGD with momentum: Atari and DMC-image in the official code) or "
                        "'adam' (Adam: the official code's DMC-state setting)", "sgd")
    learning_rate: float = _f("learning rate after warm-up", 0.2, _POSITIVE)
    momentum: float = _f("SGD momentum (optimizer='sgd')", 0.9, _FRACTION)
    weight_decay: float = _f("L2 weight decay added to the gradient (as PyTorch's SGD and Adam do)",
                             1e-4, _NON_NEGATIVE)
    max_grad_norm: float = _f("global gradient-norm clip", 5.0, _POSITIVE)
    warmup_fraction: float = _f("linear lr warm-up over this fraction of all updates", 0.01,
                                _FRACTION)
    lr_decay_updates: int = _f("lr is multiplied by lr_decay_factor after this many updates",
                               100_000, _POSITIVE)
    lr_decay_factor: float = _f("lr step-decay factor", 0.1, _POSITIVE)
    mixed_precision: bool = _f("lower-precision compute with float32 weights: float16 with a "
                               "dynamic loss scale on a GPU, bfloat16 on a CPU", False, kind=SWITCH)
    xla_inference: bool = _f("compile the search's network calls (initial and recurrent "
                             "inference) with XLA: fewer, fused kernels; results differ from the "
                             "plain graph by float rounding", False, kind=SPEED)
    intra_op_threads: int = _f("TensorFlow threads one operation may use (0: TensorFlow's default, "
                               "one per core). Takes effect once per process, before its first "
                               "TensorFlow operation; train.py and bench.py apply it", 0,
                               _NON_NEGATIVE, kind=SPEED)
    inter_op_threads: int = _f("TensorFlow threads that run independent operations of a graph at "
                               "once (0: TensorFlow's default, one per core); applied as "
                               "intra_op_threads", 0, _NON_NEGATIVE, kind=SPEED)

    # --- scale-out on Ray (ray_actors.py) --------------------------------------------------------
    ray_reanalysis_actors: int = _f("W: Ray actors that reanalyse the coming batches, each with "
                                    "its own target model (0: reanalysis in this process, in a "
                                    "second thread with pipelined_reanalysis). Batch k "
                                    "then draws its noise from the stream (seed, 1, k)",
                                    0, _NON_NEGATIVE, kind=SWITCH)
    ray_pipeline_depth: int = _f("batches sampled and in reanalysis ahead of the learner with Ray "
                                 "actors (0: one per actor); batch k is drawn during update "
                                 "k - depth", 0, _NON_NEGATIVE, kind=SWITCH)
    ray_selfplay_actors: int = _f("A: Ray actors that play the self-play games, each a contiguous "
                                  "A-th of the num_envs envs with its own self-play model (0: in "
                                  "this process). Actor a's search at decision d then draws its "
                                  "noise from the stream (seed, 2, a, d)", 0, _NON_NEGATIVE,
                                  kind=SWITCH)
    ray_eval_actor: bool = _f("play the evaluation games on a Ray actor, off the learner's path, "
                              "from a snapshot of the weights logged at its update", False,
                              kind=SPEED)
    ray_actor_cpus: float = _f("CPUs Ray reserves for each actor; its TensorFlow uses as many "
                               "threads (at least one) unless intra_op_threads says otherwise",
                               1.0, _POSITIVE, kind=SPEED)
    ray_address: str = _f("'' starts a Ray instance on this machine for the run; 'auto' joins the "
                          "cluster started by `ray start`; or the head's host:port", "",
                          kind=SPEED)
    ray_timeout_seconds: float = _f("longest wait for a Ray actor's answer: past it the run stops "
                                    "with an error instead of hanging", 600.0, _POSITIVE,
                                    kind=SPEED)
    learner_replicas: int = _f("devices the learner's update is split over (tf.distribute's "
                               "MirroredStrategy on that many GPUs): each takes batch_size / R "
                               "samples, BatchNorm and the observation normaliser use the whole "
                               "batch's statistics, and the gradients are summed before they are "
                               "clipped; the same numbers up to float rounding", 1, _POSITIVE,
                               kind=SPEED)

    # --- prioritized replay ----------------------------------------------------------------------
    use_priority: bool = _f("prioritized replay (else uniform sampling)", True, kind=SWITCH)
    priority_alpha: float = _f("priority exponent alpha", 1.0, _NON_NEGATIVE)
    priority_beta: float = _f("importance-weight exponent beta", 1.0, _FRACTION)
    priority_epsilon: float = _f("added to |v - z| so no priority is zero", 1e-6, _POSITIVE)
    priority_weight_min: float = _f("importance weights, normalised by the batch maximum, are "
                                    "clipped to [this, 1] (official replay buffer: 0.1)", 0.1,
                                    _FRACTION)

    # --- augmentation ----------------------------------------------------------------------------
    augmentation: bool = _f("random shift and intensity jitter on image observations", True,
                            kind=SWITCH)
    shift_pad: int = _f("random shift: replicate-pad by this many pixels, then crop", 4,
                        _NON_NEGATIVE)
    intensity_sigma: float = _f("intensity jitter: scale by 1 + sigma * clip(N(0,1), -2, 2)", 0.05,
                                _NON_NEGATIVE)

    # --- model copies, evaluation, checkpoints, logging -----------------------------------------
    selfplay_update_interval: int = _f("self-play model <- online weights every this many updates",
                                       100, _POSITIVE)
    target_update_interval: int = _f("target (reanalysis) model <- online weights every this many "
                                     "updates", 200, _POSITIVE)
    eval_interval: int = _f("evaluate every this many updates (and at the end)", 10_000, _POSITIVE)
    eval_episodes: int = _f("greedy evaluation episodes per evaluation", 10, _POSITIVE)
    checkpoint_interval: int = _f("checkpoint every this many updates (and at the end)", 10_000,
                                  _POSITIVE)
    keep_checkpoints: int = _f("number of newest checkpoints kept on disk", 3, _POSITIVE)
    log_interval: int = _f("write loss scalars every this many updates", 100, _POSITIVE)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, _field_type(f))
            check = f.metadata.get("check")
            if check is not None and not check(value):
                raise ValueError(f"config key '{f.name}' must be {f.metadata['allowed']}, "
                                 f"got {value!r}")
        _require(self.network in ("conv", "mlp"), "network", "'conv' or 'mlp'", self.network)
        _require(self.sampled_prior in ("uniform", "corrected"), "sampled_prior",
                 "'uniform' or 'corrected'", self.sampled_prior)
        _require(self.continuous_policy_loss in ("official", "full", "simple"),
                 "continuous_policy_loss", "'official', 'full' or 'simple'",
                 self.continuous_policy_loss)
        _require(self.q_normalization in ("node", "tree"), "q_normalization", "'node' or 'tree'",
                 self.q_normalization)
        _require(self.optimizer in ("sgd", "adam"), "optimizer", "'sgd' or 'adam'", self.optimizer)
        _require(self.action_encoding in ("scalar", "one_hot"), "action_encoding",
                 "'scalar' or 'one_hot'", self.action_encoding)
        _require(self.normalization in ("batch", "group"), "normalization", "'batch' or 'group'",
                 self.normalization)
        if self.normalization == "group":
            _require(self.num_channels % self.group_norm_groups == 0 and
                     (self.num_channels // 2) % self.group_norm_groups == 0, "group_norm_groups",
                     "a divisor of num_channels and num_channels / 2", self.group_norm_groups)
        _require(self.num_channels % 2 == 0, "num_channels", "even", self.num_channels)
        _require(self.batch_size % self.learner_replicas == 0, "learner_replicas",
                 "a divisor of batch_size", self.learner_replicas)
        _require(self.ray_selfplay_actors <= self.num_envs, "ray_selfplay_actors",
                 "at most num_envs (each actor plays at least one env)", self.ray_selfplay_actors)
        _require(abs(self.support_size / self.support_scale
                     - round(self.support_size / self.support_scale)) < 1e-6, "support_scale",
                 "a divisor of support_size (the support's ends are points)", self.support_scale)
        if self.ray_reanalysis_actors:
            _require(self.pipelined_reanalysis, "pipelined_reanalysis",
                     "true with ray_reanalysis_actors (the actors prepare batches ahead)",
                     self.pipelined_reanalysis)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config JSON is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("config JSON must be an object of key: value pairs")
        known = {f.name: f for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in REMOVED_SPEED_KEYS}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown config key '{unknown[0]}'")
        values = {k: tuple(v) if _field_type(known[k]) is tuple and isinstance(v, list) else v
                  for k, v in data.items()}
        return cls(**values)

    def search_options(self) -> dict:
        """The keyword arguments of mcts.search_with_model that come from the config."""
        return {"num_simulations": self.num_simulations,
                "max_num_considered_actions": self.max_num_considered_actions,
                "discount": self.discount, "c_visit": self.c_visit, "c_scale": self.c_scale,
                "q_normalization": self.q_normalization, "value_delta_max": self.value_delta_max}

    def sampled_search_options(self) -> dict:
        """The keyword arguments of mcts_sampled.search_with_sampled_model that come from the
        config."""
        return {"num_simulations": self.num_simulations, "discount": self.discount,
                "num_children": self.sampled_children, "c_visit": self.c_visit,
                "c_scale": self.c_scale, "value_delta_max": self.value_delta_max,
                "policy_candidates": self.policy_candidates,
                "widened_candidates": self.widened_candidates,
                "candidate_std_widening": self.candidate_std_widening,
                "action_clip": self.action_clip,
                "num_considered": min(self.max_num_considered_actions,
                                      self.policy_candidates + self.widened_candidates),
                "gumbel_scale": self.gumbel_scale,
                "corrected_prior": self.sampled_prior == "corrected"}

    def full_policy_loss(self, action_dims: int) -> bool:
        """Whether the continuous policy loss is Eq. 6 (full) for `action_dims` dimensions."""
        if self.continuous_policy_loss == "official":
            return action_dims == 1
        return self.continuous_policy_loss == "full"

    @property
    def online_updates(self) -> int:
        """Updates during self-play: `updates_per_env_step` per env step past start_transitions."""
        return self.updates_due_at(self.env_steps)

    @property
    def support_bins(self) -> int:
        """Points of the image and classic networks' supports: 2·support_size / support_scale
        + 1."""
        return 2 * round(self.support_size / self.support_scale) + 1

    @property
    def steps_per_transition(self) -> int:
        """Env steps per stored transition: `action_repeat` control steps on the Control Suite
        (whose env steps count control steps, as the paper's curves), one elsewhere."""
        return self.action_repeat if self.env_id.startswith(DMC_PREFIX) else 1

    def updates_due_at(self, env_steps: int) -> int:
        """Online updates due once `env_steps` env steps are done."""
        start = self.start_transitions * self.steps_per_transition
        online = max(0, min(env_steps, self.env_steps) - start)
        return int(math.ceil(online * self.updates_per_env_step))

    @property
    def total_updates(self) -> int:
        """Online updates plus the offline updates."""
        return self.online_updates + self.offline_updates


def _field_type(f: dataclasses.Field) -> type:
    return _config_type_hints()[f.name]


@functools.cache
def _config_type_hints() -> dict:
    """Config's field types, resolved once: every Config checks its fields, and resolving
    the hints for each of them made building a Config cost 0.8 s."""
    return typing.get_type_hints(Config)


def _require(condition: bool, key: str, allowed: str, value) -> None:
    if not condition:
        raise ValueError(f"config key '{key}' must be {allowed}, got {value!r}")


def _check_type(key: str, value, expected: type) -> None:
    if expected is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is tuple:
        ok = isinstance(value, tuple) and all(isinstance(x, int) and not isinstance(x, bool)
                                              for x in value)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(f"config key '{key}' must be of type {expected.__name__}, got {value!r}")


# --- presets --------------------------------------------------------------------------------------
# Each preset is atari100k() and a delta: sizes, budget, and the algorithm settings a smaller run
# needed, one line of reason each. The measurements behind the reasons are in docs/experiments.md
# ("Why the presets differ from `atari100k`" and the sections it names).

def atari100k() -> Config:
    """The full EfficientZero V2 Atari 100K settings, no simplifications."""
    return Config()


def smoke() -> Config:
    """Breakout with a tiny network and budget: every part of the Atari path in about a minute."""
    return dataclasses.replace(
        atari100k(), preset="smoke",
        # sizes
        num_channels=16, reduced_channels=4, head_hidden_sizes=(16,), lstm_hidden_size=32,
        projection_hidden_size=64, projection_output_size=64, prediction_head_hidden_size=32,
        num_simulations=4, batch_size=8, num_envs=2, replay_capacity=1000,
        # budget, and the schedules shrunk with it
        env_steps=240, start_transitions=64, offline_updates=8, max_episode_steps=50,
        eval_max_episode_steps=100, eval_episodes=2, sve_start_updates=40,
        td_newest_transitions=100, lr_decay_updates=150, selfplay_update_interval=10,
        target_update_interval=20, eval_interval=100, checkpoint_interval=100, keep_checkpoints=2,
        log_interval=10)


def atari_cpu() -> Config:
    """Breakout under the Atari 100K protocol (100,000 agent steps, the whole Atari path: 96x96 RGB
    frames, four stacked, the down-sampling ResNet, shift and intensity augmentation, lives) in at
    most 3 hours of a 2-core CPU (`python bench.py atari_cpu` projects it). Why:
    docs/experiments.md, "Why the presets differ from `atari100k`", `atari_cpu`."""
    return dataclasses.replace(
        atari100k(), preset="atari_cpu",
        # sizes: half the channels (a quarter of the FLOPs); the updates, not self-play, bound a run
        num_channels=32, reduced_channels=8, lstm_hidden_size=128, projection_hidden_size=256,
        projection_output_size=256, prediction_head_hidden_size=64, num_simulations=8,
        batch_size=64, num_envs=16,  # a search costs about the same for 4 states or 16
        # budget: 11,760 updates (about 0.7 s each here); refreshes at Atari's rate per env step,
        # T1 at 30% of the updates, lr decay at 80%; five evaluations of 30 games, the ones before
        # the last capped at training's 3,000 steps (a greedy agent that never presses FIRE plays
        # each game to the cap: 27,000 lockstep searches); the last plays the protocol's 27,000
        updates_per_env_step=0.12, offline_updates=0, selfplay_update_interval=12,
        target_update_interval=24, sve_start_updates=3_528, lr_decay_updates=9_408,
        eval_interval=2_352, eval_episodes=30, checkpoint_interval=1_176,
        interim_eval_max_episode_steps=3_000,
        # environment: the env serves after each lost life; the first run's greedy evaluations
        # scored 0, 2.2 and 0 with every game at the cap while its self-play games scored 8
        fire_on_life_start=True,
        # algorithm: the changes MinAtar's runs needed at this budget (docs/experiments.md)
        reanalyze_ratio=0.1,         # the updates a full reanalysis costs buy more
        optimizer="adam", learning_rate=1e-3, weight_decay=0.0,   # with SGD, or with the paper's
        value_loss_coeff=1.0, consistency_loss_coeff=0.5,         # weights, g lost the action
        action_encoding="one_hot",   # the plane a/A lost the action after conv1x1 and LayerNorm
        # bfloat16 (this machine's AMX: 1.9x on the update); on a CPU without bfloat16
        # instructions train.py warns, and --set mixed_precision=false is faster there
        mixed_precision=True)


def _vector_task() -> Config:
    """What the vector-observation presets (classic, acrobot) share."""
    return dataclasses.replace(
        atari100k(),
        # environment: one vector per observation, no lives, unclipped rewards, a 500-step cap
        frame_stack=1, terminal_on_life_loss=False, clip_rewards=False, augmentation=False,
        max_episode_steps=500, eval_max_episode_steps=500,
        # sizes: MLP networks; a support of ±30 covers |v| ≤ ~905 (CartPole, Acrobot: ≤ 260)
        network="mlp", head_hidden_sizes=(64,), lstm_hidden_size=64, projection_hidden_size=128,
        projection_output_size=128, prediction_head_hidden_size=64, support_size=30,
        num_simulations=8, frame_compression=0,
        # budget
        start_transitions=500, offline_updates=0, log_interval=50,
        # algorithm: why
        learning_rate=0.1,           # the first vector-task preset's rate, kept by every seed since
        entropy_loss_coeff=0.05)     # the official bonus for non-Atari tasks (ez/agents/base.py)


def classic() -> Config:
    """CartPole-v1 in about 10 minutes of a 2-core CPU, held by four seeds of five. Why:
    docs/experiments.md, "Why the presets differ from `atari100k`", `classic`."""
    return dataclasses.replace(
        _vector_task(), preset="classic", env_id="CartPole-v1",
        # sizes
        batch_size=64, num_envs=8, replay_capacity=20_000,
        # budget: 20,000 env steps, 9,750 updates; refreshes at Atari's rate per env step
        env_steps=20_000, updates_per_env_step=0.5,   # at 0.25 two seeds of five still climbed
        target_update_interval=100, sve_start_updates=6_000, td_newest_transitions=1_000,
        lr_decay_updates=8_000, eval_interval=1_000, checkpoint_interval=1_000,
        # algorithm: why
        value_loss_coeff=1.0,        # at 0.25 the value saw ~90 steps ahead of a 500-step game
        td_steps=30,                 # with 5, one seed of five stalled at a first value near 100
        # speed only: the same numbers up to float rounding (docs/performance.md)
        xla_inference=True, intra_op_threads=1, inter_op_threads=1,
        # reanalysis on one Ray actor, off the interpreter lock (streams: docs/design.md)
        ray_reanalysis_actors=1)


def acrobot() -> Config:
    """Acrobot-v1 with the settings its three seeds were verified with. Why: docs/experiments.md,
    "Why the presets differ from `atari100k`", `acrobot`."""
    return dataclasses.replace(
        _vector_task(), preset="acrobot", env_id="Acrobot-v1",
        # sizes
        batch_size=128, replay_capacity=50_000,
        # budget: 50,000 env steps, 12,375 updates
        env_steps=50_000, updates_per_env_step=0.25, target_update_interval=50,
        sve_start_updates=7_500, td_newest_transitions=2_500, lr_decay_updates=10_000,
        eval_interval=1_250, checkpoint_interval=2_500,
        # algorithm: why
        pipelined_reanalysis=False)  # verified with each batch reanalysed by the latest model


def minatar() -> Config:
    """MinAtar (`MinAtar/<Game>-v1`, 10x10 binary channels): the Atari algorithm at a size whose
    100,000 env steps take about an hour of a 2-core CPU (`python bench.py minatar`). Why:
    docs/experiments.md, "Why the presets differ from `atari100k`", `minatar`."""
    return dataclasses.replace(
        atari100k(), preset="minatar", env_id="MinAtar/Breakout-v1",
        # environment: rewards are 0 or 1, a game is one episode, the channels already show motion
        frame_stack=1, terminal_on_life_loss=False, clip_rewards=False,
        max_episode_steps=10_000, eval_max_episode_steps=10_000,     # a game that never ends
        augmentation=False,          # a shifted grid moves walls; binary channels have no intensity
        # sizes: the grid is kept; updates, not self-play, bound a run
        downsample=False, num_channels=16, reduced_channels=4, lstm_hidden_size=64,
        projection_hidden_size=128, projection_output_size=128, prediction_head_hidden_size=64,
        support_size=30, num_simulations=8, batch_size=64, frame_compression=0,
        num_envs=16,                 # a search costs about the same for 4 states or 16 here
        # budget: 14,700 updates; refreshes at Atari's rate per env step, T1 at 30% of the updates
        updates_per_env_step=0.15, offline_updates=0, selfplay_update_interval=15,
        target_update_interval=30, sve_start_updates=4_410, lr_decay_updates=11_760,
        eval_interval=1_500, eval_episodes=30, checkpoint_interval=1_500,
        # algorithm: why
        reanalyze_ratio=0.1,         # the updates a full reanalysis costs buy more
        optimizer="adam", learning_rate=1e-3, weight_decay=0.0,   # with SGD, or with the paper's
        value_loss_coeff=1.0, consistency_loss_coeff=0.5,         # weights, g lost the action
        td_steps=30,                 # early games last ~10 steps: a 5-step target is all bootstrap
        action_encoding="one_hot",   # the plane a/A lost the action after conv1x1 and LayerNorm
        entropy_loss_coeff=0.05)     # the official bonus for non-Atari tasks


def _continuous_task() -> Config:
    """What the continuous-control presets share: the official DMC-state settings
    (`ez/config/exp/dmc_state.yaml`, `ez/agents/ez_dmc_state.py`); networks.StateNet and the
    sampled search (mcts_sampled.py) are chosen by the task's Box action."""
    return dataclasses.replace(
        atari100k(),
        # environment: the flattened state, no lives, raw rewards; a game lasts 500 decisions
        frame_stack=1, terminal_on_life_loss=False, clip_rewards=False, augmentation=False,
        max_episode_steps=500, eval_max_episode_steps=500, frame_compression=0,
        # network: a 128-wide latent, two pre-LN residual blocks (of 256), heads [256, 256]
        mlp_state_size=128, num_blocks=2, head_hidden_sizes=(256, 256),
        projection_hidden_size=512, projection_output_size=128, prediction_head_hidden_size=512,
        value_prefix=False, nonnegative_values=True,
        # search: 32 simulations over 16 sampled candidates, all kept at first (m = 16), no Gumbel
        # noise (official cy_mcts.py)
        num_simulations=32, max_num_considered_actions=16, gumbel_scale=0.0,
        discount=0.994009,           # 0.997 per control step: 0.997² per two-step decision
        # learning: Adam; every sample is reanalysed (reanalyze_ratio 1: candidates are not stored)
        optimizer="adam", learning_rate=3e-4, weight_decay=2e-5, lr_decay_updates=1_000_000_000,
        entropy_loss_coeff=0.05,
        # budget: one update per decision, counted per control step; T1 and T2 as dmc_state.yaml
        updates_per_env_step=0.5, sve_start_updates=40_000, td_newest_transitions=20_000,
        eval_interval=5_000, checkpoint_interval=5_000)


def dmc() -> Config:
    """The official DMC-state settings (a GPU's run): hopper-hop, 200,000 control steps and 20,000
    offline updates (`ez/config/exp/dmc_state.yaml`)."""
    return dataclasses.replace(_continuous_task(), preset="dmc", env_id="dm_control/hopper-hop-v0",
                               env_steps=200_000)


def dmc_cpu() -> Config:
    """A Control Suite task (ball_in_cup-catch by default) on a 2-core CPU: 50,000 control steps
    in about an hour. Why: docs/experiments.md, "Why the presets differ from
    `atari100k`", `dmc_cpu`."""
    return dataclasses.replace(
        _continuous_task(), preset="dmc_cpu", env_id="dm_control/ball_in_cup-catch-v0",
        # sizes: a 64-wide latent with one residual block; 16 simulations over 8 candidates
        mlp_state_size=64, residual_hidden_size=128, num_blocks=1, action_embedding_size=32,
        head_hidden_sizes=(64,), projection_hidden_size=128, projection_output_size=64,
        prediction_head_hidden_size=64, batch_size=64, replay_capacity=25_000,
        num_simulations=16, widened_candidates=4,
        # budget: 50,000 control steps (25,000 decisions), one update per decision as the official
        # run (24,000 updates); T1 at its third of the updates, T2 at its fifth of the transitions
        env_steps=50_000, start_transitions=1_000, offline_updates=0, sve_start_updates=8_000,
        td_newest_transitions=5_000, eval_interval=2_400, checkpoint_interval=2_400,
        # (the official Adam rate 3e-4 stays: at 1e-3 ball_in_cup's seed 1 fell to games of 0
        # three times and ended on 665; at 3e-4 on 888.8, docs/experiments.md)
        # speed only: the same numbers up to float rounding (docs/performance.md)
        xla_inference=True, intra_op_threads=1, inter_op_threads=1)


def pendulum() -> Config:
    """Pendulum-v1 (a torque in [-2, 2] rescaled to [-1, 1]; 200-step games; rewards in [-16.3, 0])
    at dmc_cpu's size: 20,000 env steps in about 20 minutes of a 2-core CPU. Why:
    docs/experiments.md, "Why the presets differ from `atari100k`", `pendulum`."""
    return dataclasses.replace(
        dmc_cpu(), preset="pendulum", env_id="Pendulum-v1",
        # environment: gymnasium's own 200-step truncation; one control step per decision
        max_episode_steps=200, eval_max_episode_steps=200,
        # supports: the returns are negative, down to -16.3 / (1 - 0.99) per state
        nonnegative_values=False, state_reward_bound=17.0, state_value_bound=1700.0,
        discount=0.99,               # a 200-step game: the horizon SAC-class agents use here
        # budget: 20,000 env steps, 4,750 updates
        num_envs=8, replay_capacity=20_000, env_steps=20_000, updates_per_env_step=0.25,
        selfplay_update_interval=50, target_update_interval=100, sve_start_updates=1_500,
        td_newest_transitions=2_000, eval_interval=500, checkpoint_interval=1_000,
        learning_rate=1e-3)          # 4,750 updates; its three seeds ran at this rate


# The settings only continuous-control tasks read: the Control Suite, StateNet, the sampled search.
CONTINUOUS_ONLY = ("continuous_action_bins", "action_repeat", "residual_hidden_size",
                   "action_embedding_size", "state_support_bins", "policy_candidates",
                   "widened_candidates", "candidate_std_widening", "sampled_children",
                   "action_clip", "state_value_bound", "state_reward_bound", "policy_mean_bound",
                   "policy_std_offset", "policy_min_std", "sampled_prior", "continuous_policy_loss",
                   "entropy_samples", "nonnegative_values")

# The presets of continuous-action tasks (the others train discrete actions).
CONTINUOUS_PRESETS = ("dmc", "dmc_cpu", "pendulum")

PRESETS: dict[str, Callable[[], Config]] = {"atari100k": atari100k, "atari_cpu": atari_cpu,
                                              "smoke": smoke, "classic": classic,
                                              "acrobot": acrobot, "minatar": minatar,
                                              "dmc": dmc, "dmc_cpu": dmc_cpu,
                                              "pendulum": pendulum}


def get_config(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown config preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]()


def _parse(key: str, text: str, expected: type):
    text = text.strip()
    if expected is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"config key '{key}' must be true or false, got '{text}'")
    if expected is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"config key '{key}' must be an integer, got '{text}'") from None
    if expected is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config key '{key}' must be a number, got '{text}'") from None
    if expected is tuple:
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"config key '{key}' must be comma-separated integers, got '{text}'") \
                from None
    return text


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return `config` with each "key=value" applied, parsed by the field's type and validated."""
    known = {f.name: f for f in dataclasses.fields(Config)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in known:
            raise ValueError(f"unknown config key '{key}'")
        changes[key] = _parse(key, text, _field_type(known[key]))
    return dataclasses.replace(config, **changes)


def describe(config: Config) -> str:
    """One line per field: name, value, kind (switch or speed; the paper's settings unmarked) and
    doc, for TensorBoard's text tab."""
    lines = []
    for f in dataclasses.fields(config):
        kind = "" if f.metadata["kind"] == PAPER else f"[{f.metadata['kind']}] "
        lines.append(f"{f.name:<28} {getattr(config, f.name)!s:<18} # {kind}{f.metadata['doc']}")
    return "\n".join(lines)


def differences_from_paper(config: Config) -> dict[str, object]:
    """The settings in which `config` differs from `atari100k()`, the paper's Atari 100K settings,
    but for the task, the seed and the preset's name: {field: value}."""
    paper = atari100k()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in ("preset", "env_id", "seed")
            and getattr(config, f.name) != getattr(paper, f.name)}
