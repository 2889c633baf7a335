"""EfficientZero V2 training: self-play, reanalysis, the compiled update, evaluation, checkpoints.

One process (with Ray actors, ray_actors.py, reanalysis, self-play and evaluation in others), read
top to bottom:
    envs (num_envs, lockstep) -> self-play Gumbel search (mcts.py, blog topic ①) -> replay buffer
    buffer.sample -> reanalysis with the target model (policy targets, SVE / TD values) -> update
    update: unroll K steps of the dynamics, value-prefix / policy / value cross-entropies and the
            SimSiam consistency loss (blog topic ②), importance weights, SGD -> new priorities
`updates_per_env_step` updates per env step once `start_transitions` are stored (positions of games
still running are sampled, buffer.py), then `offline_updates` on the fixed buffer.
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
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoints  # noqa: E402
import config as config_module  # noqa: E402
import envs  # noqa: E402
from buffer import ReplayBuffer  # noqa: E402
from config import Config  # noqa: E402
from evaluate import evaluation_config, play_episodes, result_record  # noqa: E402
from learner import (  # noqa: E402
    Learner,
    configure_tensorflow,
    distribution_strategy,
    machine_description,
    strategy_scope,
)
from ray_actors import REANALYSIS_STREAM, Evaluation, ScaleOutError, start_ray  # noqa: E402
from selfplay import LockstepGames  # noqa: E402
from target_pipeline import TargetPipeline  # noqa: E402
from targets import model_diagnostics  # noqa: E402

# TensorFlow (keras, networks.py) is imported inside the functions that build networks: it takes
# seconds to load, and the command line answers --help and usage errors before it is needed.

EXIT_USAGE = 2
EXIT_NON_FINITE = 1
EXIT_SCALE_OUT = 3          # a Ray actor failed, died or did not answer
# train.py warns once when more than this share of an update's value targets is outside the support.
CLIPPED_WARNING_FRACTION = 0.01
# The whole run's wall time is projected once this many updates have been timed (and kept current
# in the progress bar after that).
PROJECTION_UPDATES = 50
# The handful of settings printed at the start of a run (all of them go to config.json and to
# TensorBoard's text tab).
HEADLINE_SETTINGS = ("preset", "env_id", "seed", "env_steps", "num_envs", "updates_per_env_step",
                     "batch_size", "num_simulations")
CPU_PRESETS = "atari_cpu, minatar, classic, acrobot, smoke"
# Seeds derived from config.seed: self-play game g of env i plays seed + GAME_SEED_STRIDE * g + i;
# evaluation games use seed + EVAL_SEED_OFFSET + episode (disjoint from every self-play game).
GAME_SEED_STRIDE = 1000
EVAL_SEED_OFFSET = 10_000_000


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit status 2."""


# --- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train EfficientZero V2 (TensorFlow/Keras).")
    parser.add_argument("--config", default="atari100k", choices=sorted(config_module.PRESETS),
                        help="preset: atari100k (full settings), atari_cpu (Breakout 100K at "
                             "reduced sizes, 3 hours on CPU), smoke (one minute), classic (MLP, "
                             "vector tasks; CartPole-v1), acrobot (classic with Acrobot-v1's "
                             "budget), minatar (MinAtar games, an hour on CPU), pendulum, dmc_cpu, "
                             "dmc (continuous control)")
    parser.add_argument("--env", default=None,
                        help="environment: 'Breakout' (default of Atari presets), "
                             "'MinAtar/Asterix-v1' or e.g. CartPole-v1")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: the preset's)")
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


def network_headline(config: Config, spec: envs.EnvSpec) -> str:
    """The network and search of a run, in a few words."""
    if spec.action_dims:
        return (f"network=StateNet (latent {config.mlp_state_size}), sampled search over "
                f"{config.policy_candidates + config.widened_candidates} candidates")
    return f"network={config.network}, num_channels={config.num_channels}"


def check_continuous(config: Config, spec: envs.EnvSpec) -> None:
    """Refuse settings a continuous-action task cannot train with (UsageError)."""
    if config.reanalyze_ratio < 1.0:
        raise UsageError(f"'{config.env_id}' has continuous actions: reanalyze_ratio must be 1 "
                         "(the acting search's candidates are not stored); try --config "
                         "pendulum or dmc_cpu")
    if config.value_prefix:
        raise UsageError(f"'{config.env_id}' has continuous actions: its network predicts rewards, "
                         "not value prefixes (value_prefix=false); try --config pendulum or "
                         "dmc_cpu")


def default_run_dir(config: Config) -> str:
    env_name = config.env_id.replace("ALE/", "").replace("/", "-")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{env_name}-{config.preset}-seed{config.seed}-{stamp}")


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 20 min' or '7.5 days'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{seconds / 86400:.1f} days"


class RunClock:
    """Projects the wall time left in a run from what the updates so far have cost: the online phase
    at its measured seconds per env step (self-play and its share of updates together), then the
    offline updates at the measured seconds per update. Evaluations are not counted, and neither is
    the first update, which compiles the graph."""

    def __init__(self, config: Config):
        self.config = config
        self._start: tuple[float, int, int] | None = None     # (time, env_steps, updates)
        self.update_seconds = 0.0
        self.timed_updates = 0

    def record_update(self, seconds: float, env_steps: int, updates: int) -> None:
        """One update took `seconds`. The first one also compiles the update graph and is not
        counted. The clock of the online phase starts after it, and starts again after every
        update that comes at the env step it started at: updates that come in one burst at one env
        step (the first ones, without `replay_open_games`, wait for whole games) say nothing about
        the online rate."""
        if self._start is not None:
            self.update_seconds += seconds
            self.timed_updates += 1
        if self._start is None or env_steps == self._start[1]:
            self._start = (time.perf_counter(), env_steps, updates)

    def seconds_left(self, env_steps: int, updates: int) -> float | None:
        """None until PROJECTION_UPDATES updates have been timed and, while self-play goes on, until
        as many have been done since the clock of the online phase started."""
        if self._start is None or self.timed_updates < PROJECTION_UPDATES:
            return None
        started, start_steps, start_updates = self._start
        if env_steps < self.config.env_steps and updates - start_updates < PROJECTION_UPDATES:
            return None
        per_update = self.update_seconds / self.timed_updates
        steps_done = env_steps - start_steps
        online_left = 0.0
        if env_steps < self.config.env_steps:
            online_left = (self.config.env_steps - env_steps) * (time.perf_counter() - started) \
                / steps_done
        offline_left = self.config.total_updates - max(updates, self.config.online_updates)
        return online_left + offline_left * per_update


def prepare_run_dir(path: str, resuming: bool) -> None:
    """Make the run folder and check that it is writable; a new run never writes into a folder that
    holds another run's settings or checkpoints."""
    if not resuming and any(os.path.exists(os.path.join(path, name))
                            for name in ("config.json", "checkpoints")):
        raise UsageError(f"run folder '{path}' already holds a run: continue it with --resume "
                         f"{path}, or choose another --run-dir")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as file:
            file.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"cannot write run folder '{path}': {error.strerror or error}") from None


def code_version() -> str:
    """The repository's commit, '+changes' when files differ from it; 'unknown' outside git."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=root, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changes.strip() else "")


def record_machine(run_dir: str, env_steps: int, updates: int) -> None:
    """Append this process's machine and code version to `machine.json`, a list with one entry
    per start or resume of the run, so that its wall times (metrics.csv) can be read beside the
    hardware and its results beside the code."""
    path = os.path.join(run_dir, "machine.json")
    entries = []
    if os.path.exists(path):
        with open(path) as file:
            entries = json.load(file)
    entries.append({"env_steps": env_steps, "updates": updates, "machine": machine_description(),
                    "code": code_version(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds")})
    with open(path, "w") as file:
        json.dump(entries, file, indent=1)


# --- logging: TensorBoard scalars and metrics.csv, one place -------------------------------------

class MetricsLogger:
    """Writes every scalar to TensorBoard and to `metrics.csv` (updates, env_steps, wall_seconds,
    key, value)."""

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

    def log_settings(self, config: Config) -> None:
        """Every setting, one line each, in TensorBoard's text tab."""
        with self._writer.as_default():
            lines = config_module.describe(config).splitlines()
            self._tf.summary.text("config", "\n".join(f"    {line}" for line in lines), step=0)

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


# --- the run --------------------------------------------------------------------------------------

class Trainer:
    """Owns envs, models, buffer and counters; `run()` is the whole training job."""

    def __init__(self, config: Config, run_dir: str, resume_from: checkpoints.Checkpoint | None):
        import keras
        import tensorflow as tf

        from networks import build_network

        on_gpu = configure_tensorflow(config)
        keras.utils.set_random_seed(config.seed)
        if not on_gpu:
            # Same seed, same run on CPU; GPUs lack deterministic kernels for some ops, so there
            # the run is reproducible only in distribution.
            tf.config.experimental.enable_op_determinism()
        self.config, self.run_dir = config, run_dir
        self.spec = envs.env_spec(config.env_id, config)
        shape, actions = self.spec.observation_shape, self.spec.num_actions
        # With `learner_replicas` > 1 the online network's variables live on every device.
        strategy = distribution_strategy(config)
        with strategy_scope(strategy):
            self.online = build_network(config, self.spec)
        self.selfplay_model = build_network(config, self.spec)
        self.target_model = build_network(config, self.spec)
        self.learner = Learner(config, self.online, shape, actions, strategy)
        self.rng = np.random.default_rng(config.seed)
        self.reanalysis_rng = np.random.default_rng((config.seed, REANALYSIS_STREAM))
        self.env_steps = self.updates = self.games = 0
        self.best_eval: float | None = None
        self.last_eval: float | None = None
        self.buffer = ReplayBuffer(config, self.spec.frame_shape, self.spec.frame_dtype, actions,
                                   config.num_envs, self.spec.action_dims)
        if resume_from is not None:
            self._restore(resume_from)
        else:
            weights = self.online.get_weights()
            self.selfplay_model.set_weights(weights)
            self.target_model.set_weights(weights)
        # Ray, when an actor is asked for: started here, stopped by close().
        self.owns_ray = bool(config.ray_reanalysis_actors or config.ray_selfplay_actors
                             or config.ray_eval_actor) and start_ray(config.ray_address)
        self.evaluator = None
        if config.ray_eval_actor:
            from ray_actors import RayEvaluator

            self.evaluator = RayEvaluator(config, self.spec)
        self.pipeline = TargetPipeline(
            config, lambda rng: self.buffer.sample(config.batch_size, rng), self.target_model,
            self.rng, self.reanalysis_rng, self.spec)
        seeds = [self.game_seed(i) for i in range(config.num_envs)]
        if config.ray_selfplay_actors:
            from ray_actors import RaySelfPlay

            self.players = RaySelfPlay(config, self.spec, seeds, self.selfplay_model)
        else:
            self.players = LockstepGames(config, self.spec, self.selfplay_model, 0, seeds,
                                         lambda decision: self.rng)
        self.logger = MetricsLogger(run_dir, self.updates if resume_from is not None else None)
        record_machine(run_dir, self.env_steps, self.updates)
        self.logger.log_settings(config)
        self.clock = RunClock(config)
        if not on_gpu and config.preset == "atari100k":
            print(f"note: the full atari100k preset takes days on a CPU (python bench.py "
                  f"projection); presets that fit a CPU: {CPU_PRESETS}")
        self.recent_returns: list[float] = []
        self.warned_clipping = False
        # Root frames of the first logged batch: the fixed batch of diagnostics/bn_*_gap.
        self.fixed_frames: np.ndarray | None = None
        if resume_from is not None and resume_from.state.get("pending_evaluation"):
            self.evaluate()                   # the evaluation the checkpoint left in flight

    # -- checkpoints --
    def _restore(self, checkpoint: checkpoints.Checkpoint) -> None:
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
        self.env_steps, self.updates, self.games = (state["env_steps"], state["updates"],
                                                    state["games"])
        self.best_eval, self.last_eval = state["best_eval"], state["last_eval"]
        self.rng.bit_generator.state = state["numpy_rng"]
        if "reanalysis_rng" in state:         # checkpoints from before pipelined reanalysis lack it
            self.reanalysis_rng.bit_generator.state = state["reanalysis_rng"]
        self.buffer = ReplayBuffer.load(checkpoint.buffer_path, self.config)
        print(f"resumed at {self.env_steps} env steps, {self.updates} updates, "
              f"{len(self.buffer)} transitions")

    def save_checkpoint(self) -> str:
        self.pipeline.discard()
        # An evaluation of these very weights may stay in flight: the resumed run replays it.
        pending = False
        if self.evaluator is not None:
            self._record_evaluations(self.evaluator.drain_older_than(self.updates))
            pending = bool(self.evaluator.pending)
        arrays = {"online": self.online.get_weights(),
                  "selfplay": self.selfplay_model.get_weights(),
                  "target": self.target_model.get_weights(), **self.learner.variables_to_save()}
        state = {"env_steps": self.env_steps, "updates": self.updates, "games": self.games,
                 "best_eval": self.best_eval, "last_eval": self.last_eval,
                 "numpy_rng": self.rng.bit_generator.state,
                 "reanalysis_rng": self.reanalysis_rng.bit_generator.state,
                 "pending_evaluation": pending}
        return checkpoints.save_checkpoint(
            os.path.join(self.run_dir, "checkpoints"), self.updates, arrays, state, self.config,
            self.buffer.save, self.config.keep_checkpoints)

    # -- self-play --
    def game_seed(self, env_index: int) -> int:
        """The seed of the next game of self-play env `env_index`."""
        return self.config.seed + GAME_SEED_STRIDE * self.games + env_index

    def start_games(self, env_ids: list[int]) -> None:
        frames = self.players.start(env_ids, [self.game_seed(i) for i in env_ids])
        self.buffer.begin_episodes(np.asarray(env_ids), frames)

    def selfplay_step(self) -> float:
        """One lockstep step of all envs, acting by the search (selfplay.py, here or on the
        self-play actors); returns the search seconds."""
        config = self.config
        decision = self.env_steps // (config.num_envs * config.steps_per_transition)
        step = self.players.step(decision)
        for game in step.ended:
            self.games += 1
            self.recent_returns = (self.recent_returns + [game.game_return])[-10:]
            self.logger.log({"charts/episode_return": game.game_return,
                             "charts/episode_length": game.game_length},
                            self.updates, self.env_steps + game.env_index + 1)
        self.buffer.add_step(step.action, step.reward, step.next_frame, step.terminated,
                             step.truncated, step.root_value, step.improved_policy, self.env_steps)
        self.env_steps += config.num_envs * config.steps_per_transition
        ended = np.flatnonzero(step.terminated | step.truncated).tolist()
        if ended:
            self.start_games(ended)
        return step.search_seconds

    # -- learning --
    def update_once(self) -> bool:
        """Sample and reanalyse (target_pipeline.py), update once, write the new priorities and
        refresh the model copies that are due; returns False if the loss was not finite."""
        config = self.config
        start = time.perf_counter()
        prepared = self.pipeline.next(self.updates,
                                      following=config.total_updates - self.updates - 1)
        batch, targets = prepared.batch, prepared.targets.result()
        learner_start = time.perf_counter()
        result = self.learner.update(batch, targets, self.updates)
        done = time.perf_counter()
        self.clock.record_update(done - start, self.env_steps, self.updates)
        if not result.finite:
            self.logger.log({"losses/non_finite_update": self.updates}, self.updates,
                            self.env_steps)
            return False
        self.buffer.update_priorities(batch.indices, result.priorities, batch.collected_at)
        self.updates += 1
        if self.updates % config.selfplay_update_interval == 0:
            self.players.set_weights(self.online.get_weights())     # sets self.selfplay_model
        if self.updates % config.target_update_interval == 0:
            self.pipeline.set_target_weights(self.online.get_weights())
        self._warn_once_about_clipping(result)
        if self.updates % config.log_interval == 0:
            self._log_update(batch, targets, result, prepared, done - learner_start)
        return True

    def _warn_once_about_clipping(self, result) -> None:
        config = self.config
        if result.scalars["targets/clipped_fraction"] > CLIPPED_WARNING_FRACTION \
                and not self.warned_clipping:
            self.warned_clipping = True
            from networks import support_size_for

            largest = result.scalars["targets/max_abs_value_target"]
            if self.spec.action_dims:
                support = f"state_value_bound={config.state_value_bound:g}"
                needed = f"state_value_bound={math.ceil(largest)}"
            else:
                support = f"support_size={config.support_size}"
                needed = f"support_size={support_size_for(largest)}"
            print(f"warning: {result.scalars['targets/clipped_fraction']:.1%} of the value targets "
                  f"lie outside the support ({support}); the largest, |{largest:.0f}|, needs "
                  f"--set {needed}", file=sys.stderr)

    def _log_update(self, batch, targets, result, prepared, update_seconds: float) -> None:
        """Losses, target diagnostics and timings of this update (every `log_interval`)."""
        config = self.config
        if self.fixed_frames is None:
            self.fixed_frames = batch.frames[:, :config.frame_stack]
        scalars = dict(result.scalars)
        scalars.update(targets.diagnostics)
        scalars.update(self.learner.normalization_gap(self.fixed_frames))
        if not self.spec.action_dims:
            scalars.update(model_diagnostics(self.online, batch, config))
        scalars["targets/sve_fraction"] = targets.sve_fraction
        scalars["perf/sample_ms"] = 1000 * prepared.sample_seconds
        scalars["perf/reanalyze_ms"] = 1000 * (targets.network_seconds + targets.tree_seconds)
        scalars["perf/reanalyze_tree_ms"] = 1000 * targets.tree_seconds
        scalars["perf/reanalyze_wait_ms"] = 1000 * prepared.wait_seconds
        scalars["perf/update_ms"] = 1000 * update_seconds
        self.logger.log(scalars, self.updates, self.env_steps)

    def evaluate(self) -> None:
        """Greedy games of the online weights as they are now: played here, or sent to the
        evaluation actor (`ray_eval_actor`) and recorded when they finish."""
        seed = self.config.seed + EVAL_SEED_OFFSET
        final = self.updates >= self.config.total_updates
        if self.evaluator is not None:
            self.evaluator.submit(self.online.get_weights(), seed, self.updates, self.env_steps,
                                  final)
            return
        config = evaluation_config(self.config, final)
        start = time.perf_counter()
        result = play_episodes(self.online, config, config.env_id, config.eval_episodes,
                               seed=seed)
        self._record_evaluation(Evaluation(self.updates, self.env_steps, result,
                                           time.perf_counter() - start))

    def _record_evaluations(self, evaluations: list[Evaluation]) -> None:
        for evaluation in evaluations:
            self._record_evaluation(evaluation)

    def _record_evaluation(self, evaluation: Evaluation) -> None:
        """Log an evaluation at the update and env step of the weights it played; write
        eval/eval-<updates>.json."""
        result, updates, env_steps = evaluation.result, evaluation.updates, evaluation.env_steps
        record = result_record(self.config.env_id, result)
        self.last_eval = record["mean"]
        if self.best_eval is None or record["mean"] > self.best_eval:
            self.best_eval = record["mean"]
        scalars = {f"eval/{key}": value for key, value in record.items()
                   if isinstance(value, float)}
        scalars["eval/best_mean"] = self.best_eval
        scalars["eval/initial_value"] = float(np.mean(result.initial_values))
        scalars["eval/initial_discounted_return"] = float(np.mean(result.discounted_returns))
        scalars["perf/eval_seconds"] = evaluation.seconds
        self.logger.log(scalars, updates, env_steps)
        eval_dir = os.path.join(self.run_dir, "eval")
        os.makedirs(eval_dir, exist_ok=True)
        with open(os.path.join(eval_dir, f"eval-{updates:08d}.json"), "w") as file:
            json.dump({"updates": updates, "env_steps": env_steps, **record}, file, indent=1)

    def _after_update(self) -> None:
        if self.evaluator is not None:
            self._record_evaluations(self.evaluator.finished())
        if self.updates % self.config.eval_interval == 0:
            self.evaluate()
        if self.updates % self.config.checkpoint_interval == 0:
            self.save_checkpoint()

    def play_and_learn(self) -> float:
        """One lockstep self-play step, then every update now due at the replay ratio (with their
        evaluations and checkpoints): the body of the online phase. Returns the search seconds."""
        search_seconds = self.selfplay_step()
        due = self.config.updates_due_at(self.env_steps)
        while self.updates < due and self.ready_to_learn():
            self.learn_once()
        return search_seconds

    def ready_to_learn(self) -> bool:
        """Whether `start_transitions` have been stored (those of running games count) and a
        position can be sampled. With `replay_open_games` the updates then follow the replay ratio
        from the first one; without it they wait for the first games to end and then catch up."""
        return self.buffer.num_added >= self.config.start_transitions and len(self.buffer) > 0

    def learn_once(self) -> None:
        """One update, then the evaluation and checkpoint it makes due; a non-finite loss saves
        the last good state and raises FloatingPointError."""
        if not self.update_once():
            self._stop_non_finite()
        self._after_update()

    def _stop_non_finite(self) -> None:
        path = self.save_checkpoint()
        raise FloatingPointError(f"non-finite loss at update {self.updates + 1}: the weights were "
                                 f"left untouched and the last good state saved to {path}")

    def close(self) -> None:
        """Stop the reanalysis workers and the self-play and evaluation actors, if any, and Ray if
        started here."""
        self.pipeline.close()
        self.players.close()
        if self.evaluator is not None:
            self.evaluator.close()
        if self.owns_ray:
            import ray

            ray.shutdown()
            self.owns_ray = False

    def run(self) -> None:
        config = self.config
        run_start = time.perf_counter()
        self.start_games(list(range(config.num_envs)))
        # tqdm's own ETA would extrapolate the fast collection before the first update; the bar
        # shows the RunClock's projection of the whole run instead.
        with tqdm(total=config.env_steps, initial=min(self.env_steps, config.env_steps),
                  unit="step", desc="self-play", mininterval=1.0, dynamic_ncols=True,
                  bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") as progress:
            self._online_phase(progress, run_start)
        with tqdm(total=config.total_updates, initial=self.updates, unit="update", desc="updates",
                  mininterval=1.0, dynamic_ncols=True) as progress:
            while self.updates < config.total_updates:
                self.learn_once()
                progress.update(1)
        if self.updates % config.eval_interval != 0:
            self.evaluate()
        if self.evaluator is not None:
            self._record_evaluations(self.evaluator.drain())
        if self.updates % config.checkpoint_interval != 0:
            self.save_checkpoint()
        self.logger.close()
        print(f"done: {self.env_steps} env steps, {self.updates} updates; evaluation mean "
              f"{self.last_eval:.2f} (best {self.best_eval:.2f}); run folder {self.run_dir}")

    def _online_phase(self, progress, run_start: float) -> None:
        """Self-play with its due updates until the env-step budget, logging speed every 30 s and
        showing the projected time left on the `progress` bar."""
        config = self.config
        projected = False
        window_start, window_steps, window_updates = time.perf_counter(), self.env_steps, \
            self.updates
        search_seconds = 0.0
        while self.env_steps < config.env_steps:
            search_seconds += self.play_and_learn()
            progress.update(config.num_envs * config.steps_per_transition)
            elapsed = time.perf_counter() - window_start
            if elapsed >= 30.0 or self.env_steps >= config.env_steps:
                steps = self.env_steps - window_steps
                searches = steps // (config.num_envs * config.steps_per_transition)
                self.logger.log({"perf/env_steps_per_second": steps / elapsed,
                                 "perf/updates_per_second":
                                     (self.updates - window_updates) / elapsed,
                                 "perf/search_ms": 1000 * search_seconds / max(1, searches),
                                 "charts/decisions": self.env_steps // config.steps_per_transition},
                                self.updates, self.env_steps)
                window_start, window_steps, window_updates = time.perf_counter(), self.env_steps, \
                    self.updates
                search_seconds = 0.0
            recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"
            left = self.clock.seconds_left(self.env_steps, self.updates)
            if left is not None and not projected:
                projected = True
                progress.write(f"projected wall time of the whole run: "
                               f"{format_duration(time.perf_counter() - run_start + left)} "
                               f"({format_duration(left)} left; measured over "
                               f"{self.clock.timed_updates} updates, evaluations not counted)")
            eta = format_duration(left) if left is not None else "after the first updates"
            progress.set_postfix(updates=self.updates, ret=recent, left=eta, refresh=False)


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
        spec = envs.env_spec(config.env_id, config)   # unknown env ids fail here, before work
        if spec.action_dims:
            check_continuous(config, spec)
        prepare_run_dir(run_dir, resuming=resume_from is not None)
        if resume_from is None:
            with open(os.path.join(run_dir, "config.json"), "w") as file:
                file.write(config.to_json())
        print(", ".join(f"{key}={getattr(config, key)}" for key in HEADLINE_SETTINGS)
              + f", {network_headline(config, spec)}; {config.total_updates} updates")
        differences = config_module.differences_from_paper(config)
        print("differs from the paper's settings (atari100k): "
              + (", ".join(f"{key}={value}" for key, value in differences.items()) or "nothing"))
        print(f"run folder: {run_dir} (every setting in config.json)"
              + (f"; resuming from {resume_from.path}" if resume_from else ""))
        trainer = Trainer(config, run_dir, resume_from)
    except (ValueError, UsageError, checkpoints.CheckpointError, ScaleOutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        trainer.run()
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except ScaleOutError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SCALE_OUT
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
