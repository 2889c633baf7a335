"""train.py and evaluate.py from the command a user types, plus the update step in-process."""

import csv
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np
import pytest

import checkpoints
import config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A guard against a hung run, not a speed bound: on a loaded 2-core machine a smoke run has taken
# over 4 minutes to reach its first checkpoint (speed is measured by bench.py).
HUNG_RUN_SECONDS = 1200


def run_script(*args, timeout=HUNG_RUN_SECONDS):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def assert_one_line_usage_error(result):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


class SmokeRun(NamedTuple):
    """The smoke preset's run, killed (SIGKILL) once its first checkpoint is written and resumed
    with `train.py --resume` to the end: what the kill left, and the resumed process's output."""
    run_dir: str
    killed_at: checkpoints.Checkpoint     # the newest checkpoint when the run was killed
    killed_buffer_size: int               # transitions in that checkpoint's replay buffer
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """One smoke run serves every test of a finished run: resuming one is what a user does after a
    crash, and a whole second run would cost CI minutes."""
    from buffer import ReplayBuffer

    run_dir = str(tmp_path_factory.mktemp("smoke") / "run")
    process = subprocess.Popen([sys.executable, "train.py", "--config", "smoke",
                                "--run-dir", run_dir],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HUNG_RUN_SECONDS
    try:
        while not checkpoints.list_checkpoints(os.path.join(run_dir, "checkpoints")):
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint was written"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = checkpoints.load_checkpoint(run_dir)
    killed_buffer_size = len(ReplayBuffer.load(killed_at.buffer_path, killed_at.config))
    resumed = run_script("train.py", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return SmokeRun(run_dir, killed_at, killed_buffer_size, resumed)


@pytest.mark.slow
def test_smoke_run_writes_everything_a_user_relies_on(smoke_run):
    run_dir, result = smoke_run.run_dir, smoke_run.resumed
    assert cfg.Config.from_json(open(os.path.join(run_dir, "config.json")).read()) == cfg.smoke()
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        keys = {row["key"] for row in csv.DictReader(file)}
    for key in ("losses/total", "losses/consistency", "losses/reward", "losses/policy",
                "losses/value", "losses/grad_norm", "losses/lr", "targets/sve_fraction",
                "eval/mean", "eval/human_normalized", "eval/initial_value",
                "eval/initial_discounted_return", "perf/env_steps_per_second",
                "perf/update_ms", "charts/episode_return", "diagnostics/root_q_gap",
                "diagnostics/action_difference", "diagnostics/reward_zero_accuracy"):
        assert key in keys, key
    newest = checkpoints.resolve_checkpoint(run_dir)
    loaded = checkpoints.load_checkpoint(newest)
    assert loaded.state["updates"] == cfg.smoke().total_updates
    assert loaded.buffer_path is not None
    assert "done:" in result.stdout
    assert "differs from the paper's settings (atari100k): max_episode_steps=50, " in result.stdout
    with open(os.path.join(run_dir, "machine.json")) as file:
        started, resumed = json.load(file)            # one entry per process that ran it
    assert started["env_steps"] == 0
    assert resumed["env_steps"] == smoke_run.killed_at.state["env_steps"]
    for machine in (started, resumed):
        assert "cores" in machine["machine"]
        assert machine["code"] == "unknown" or len(machine["code"].split("+")[0]) >= 7


@pytest.mark.slow
def test_evaluate_plays_a_checkpoint_and_writes_json(smoke_run, tmp_path):
    run_dir = smoke_run.run_dir
    out = str(tmp_path / "scores.json")
    video = str(tmp_path / "game.mp4")
    result = run_script("evaluate.py", "--checkpoint", run_dir, "--episodes", "2", "--json", out,
                        "--video", video)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.load(open(out))
    assert scores["episodes"] == 2 and len(scores["returns"]) == 2
    assert scores["mean"] == pytest.approx(np.mean(scores["returns"]))
    assert [sum(counts) for counts in scores["action_counts"]] == scores["lengths"]
    assert "actions played: 0: " in result.stdout
    evaluations = sorted(glob.glob(os.path.join(run_dir, "eval", "*.json")))
    during_training = json.load(open(evaluations[-1]))
    assert len(during_training["initial_values"]) == len(during_training["discounted_returns"]) \
        == cfg.smoke().eval_episodes
    assert set(scores) - {"checkpoint", "env_id"} == set(during_training) - {"updates", "env_steps"}
    assert "human_normalized" in scores and "±" in result.stdout
    assert os.path.getsize(video) > 1000


def test_evaluation_reports_the_first_root_value_beside_the_discounted_return():
    """CartPole pays 1 a step, so a game of L steps has the discounted return (1 - γ^L) / (1 - γ);
    the initial values are the greedy search's root values on the reset observations."""
    import envs
    from evaluate import play_episodes
    from mcts import search_actions
    from networks import EfficientZeroNet

    config = dataclasses.replace(cfg.classic(), eval_max_episode_steps=30, num_simulations=4)
    model = EfficientZeroNet(config, (4,), 2)
    result = play_episodes(model, config, "CartPole-v1", num_episodes=3, seed=7)
    gamma = config.discount
    expected = [(1 - gamma ** length) / (1 - gamma) for length in result.lengths]
    assert result.discounted_returns == pytest.approx(expected, rel=1e-9)
    assert result.lengths == [int(r) for r in result.returns]
    assert [sum(counts) for counts in result.action_counts] == result.lengths
    assert all(len(counts) == 2 for counts in result.action_counts)
    first = np.stack([envs.make_env("CartPole-v1", 7 + i, False, config).reset(seed=7 + i)[0]
                      for i in range(3)])
    roots = search_actions(model, first, config.search_options(), None, gumbel_scale=0.0)
    assert result.initial_values == pytest.approx(roots.root_value.tolist(), abs=1e-5)


# The minatar preset with a tiny network and budget: every part of a MinAtar run in about a minute,
# 56 updates, so evaluations at update 40 and at the end.
MINATAR_TINY = ["env_steps=320", "start_transitions=96", "num_envs=4", "updates_per_env_step=0.25",
                "num_channels=8", "reduced_channels=2", "head_hidden_sizes=8",
                "lstm_hidden_size=16",
                "projection_hidden_size=32", "projection_output_size=32",
                "prediction_head_hidden_size=16", "num_simulations=4", "batch_size=16",
                "sve_start_updates=20", "td_newest_transitions=50", "eval_interval=40",
                "checkpoint_interval=40", "eval_episodes=2", "eval_max_episode_steps=200",
                "log_interval=10"]


@pytest.mark.slow
def test_a_short_minatar_run_trains_evaluates_and_films_in_colour(tmp_path):
    import cv2

    run_dir = str(tmp_path / "run")
    overrides = [arg for item in MINATAR_TINY for arg in ("--set", item)]
    result = run_script("train.py", "--config", "minatar", "--env", "MinAtar/Asterix-v1",
                        "--run-dir", run_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    config = cfg.Config.from_json(open(os.path.join(run_dir, "config.json")).read())
    assert config.env_id == "MinAtar/Asterix-v1" and not config.downsample
    assert len(glob.glob(os.path.join(run_dir, "eval", "eval-*.json"))) == 2
    video = str(tmp_path / "asterix.mp4")
    result = run_script("evaluate.py", "--checkpoint", run_dir, "--episodes", "2", "--video", video)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MinAtar/Asterix-v1" in result.stdout and "human-normalised" not in result.stdout
    capture = cv2.VideoCapture(video)
    ok, picture = capture.read()
    assert ok and picture.shape == (380, 380, 3)              # 10x10 cells of 38 pixels
    assert (np.abs(picture.astype(int) - picture[..., ::-1]).max() > 50)   # colours, not gray


@pytest.mark.slow
def test_a_killed_run_resumes_with_counters_and_buffer(smoke_run):
    saved = smoke_run.killed_at.state
    assert 0 < saved["updates"] < cfg.smoke().total_updates
    assert f"resumed at {saved['env_steps']} env steps, {saved['updates']} updates, " \
           f"{smoke_run.killed_buffer_size} transitions" in smoke_run.resumed.stdout
    final = checkpoints.load_checkpoint(smoke_run.run_dir)
    assert final.state["updates"] == cfg.smoke().total_updates
    with open(os.path.join(smoke_run.run_dir, "metrics.csv")) as file:
        updates = [int(row["updates"]) for row in csv.DictReader(file)
                   if row["key"] == "losses/total"]
    total, interval = cfg.smoke().total_updates, cfg.smoke().log_interval
    assert updates == sorted(set(updates)) and updates[-1] == total - total % interval


# --- bad input: one line on stderr, exit status 2 -------------------------------------------------

def test_unknown_env_is_a_usage_error(tmp_path):
    line = assert_one_line_usage_error(run_script("train.py", "--config", "smoke", "--env",
                                                  "NoSuchGame-v9", "--run-dir", str(tmp_path)))
    assert "NoSuchGame-v9" in line


def test_unknown_config_key_is_a_usage_error(tmp_path):
    line = assert_one_line_usage_error(run_script("train.py", "--config", "smoke", "--set",
                                                  "bogus=1", "--run-dir", str(tmp_path)))
    assert "unknown config key 'bogus'" in line


def test_bad_value_is_a_usage_error(tmp_path):
    line = assert_one_line_usage_error(run_script("train.py", "--config", "smoke", "--set",
                                                  "num_simulations=0", "--run-dir", str(tmp_path)))
    assert "num_simulations" in line


def test_unwritable_run_dir_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = assert_one_line_usage_error(run_script("train.py", "--config", "smoke", "--run-dir",
                                                  str(blocker / "run")))
    assert "cannot write run folder" in line


def test_a_new_run_in_the_folder_of_another_is_a_usage_error(tmp_path):
    """Its checkpoints, metrics and evaluations would mix with the other run's."""
    for marker in ("config.json", "checkpoints"):
        run_dir = tmp_path / marker.replace(".", "-")
        (run_dir / "checkpoints").mkdir(parents=True)
        if marker == "config.json":
            os.rmdir(run_dir / "checkpoints")
            (run_dir / marker).write_text("{}")
        line = assert_one_line_usage_error(run_script("train.py", "--config", "smoke",
                                                      "--run-dir", str(run_dir)))
        assert f"run folder '{run_dir}' already holds a run: continue it with --resume" in line
        assert sorted(os.listdir(run_dir)) == [marker]


def test_missing_checkpoint_is_a_usage_error(tmp_path):
    assert "does not exist" in assert_one_line_usage_error(
        run_script("evaluate.py", "--checkpoint", str(tmp_path / "nothing")))
    assert "does not exist" in assert_one_line_usage_error(
        run_script("train.py", "--resume", str(tmp_path / "nothing")))


def _smoke_checkpoint(folder, num_actions=4):
    """A real checkpoint of the smoke network, written without running a training job."""
    from networks import EfficientZeroNet

    config = cfg.smoke()
    net = EfficientZeroNet(config, (96, 96, 12), num_actions)
    weights = net.get_weights()
    return checkpoints.save_checkpoint(str(folder), 1, {"online": weights}, {}, config, None, 1)


def test_partial_and_corrupt_checkpoints_are_usage_errors(tmp_path):
    path = _smoke_checkpoint(tmp_path / "partial")
    os.remove(os.path.join(path, checkpoints.COMPLETE_MARKER))
    assert "incomplete" in assert_one_line_usage_error(
        run_script("evaluate.py", "--checkpoint", path))
    path = _smoke_checkpoint(tmp_path / "corrupt")
    with open(os.path.join(path, "weights.npz"), "r+b") as file:
        file.seek(100)
        file.write(b"\x00" * 64)
    assert "corrupt" in assert_one_line_usage_error(run_script("evaluate.py", "--checkpoint", path))


def test_checkpoint_for_another_env_is_a_usage_error(tmp_path):
    path = _smoke_checkpoint(tmp_path / "other")
    line = assert_one_line_usage_error(run_script("evaluate.py", "--checkpoint", path, "--env",
                                                  "Pong"))
    assert "another env or network shape" in line


def test_resuming_a_checkpoint_without_buffer_is_a_usage_error(tmp_path):
    run_dir = tmp_path / "run"
    _smoke_checkpoint(run_dir / "checkpoints")
    line = assert_one_line_usage_error(run_script("train.py", "--resume", str(run_dir)))
    assert "holds no replay buffer" in line


# --- the update step, in-process -----------------------------------------------------------------

def _tiny_learner(seed=0, **changes):
    import keras

    from learner import Learner
    from networks import EfficientZeroNet

    config = dataclasses.replace(cfg.classic(), seed=seed, **{"batch_size": 16, **changes})
    keras.utils.set_random_seed(seed)
    net = EfficientZeroNet(config, (4,), 2)
    return config, net, Learner(config, net, (4,), 2)


def _fixed_batch(config, seed=0):
    from buffer import Batch
    from targets import Targets

    rng = np.random.default_rng(seed)
    B, K, A = config.batch_size, config.unroll_steps, 2
    fields = {name: None for name in Batch._fields}
    fields.update(frames=rng.normal(size=(B, K + 1, 4)).astype(np.float32),
                  actions=rng.integers(0, A, size=(B, K)).astype(np.int32),
                  reward_targets=np.cumsum(np.ones((B, K), np.float32), axis=1),
                  transition_masks=np.ones((B, K + 1), np.float32),
                  value_masks=np.ones((B, K + 1), np.float32),
                  importance_weights=np.ones(B, np.float32), indices=np.arange(B))
    policies = rng.dirichlet(np.ones(A), size=(B, K + 1)).astype(np.float32)
    target_fields = {name: 0.0 for name in Targets._fields}
    target_fields.update(values=rng.uniform(0, 5, size=(B, K + 1)).astype(np.float32),
                         policies=policies)
    return Batch(**fields), Targets(**target_fields)


def test_the_update_lowers_the_loss_on_a_fixed_batch():
    config, net, learner = _tiny_learner(learning_rate=0.05, warmup_fraction=0.0)
    batch, targets = _fixed_batch(config)
    losses = [learner.update(batch, targets, 100).scalars["losses/total"] for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_non_finite_loss_leaves_every_weight_untouched():
    config, net, learner = _tiny_learner()
    batch, targets = _fixed_batch(config)
    before = net.get_weights()
    values = targets.values.copy()
    values[3, 2] = np.nan
    result = learner.update(batch, targets._replace(values=values), 0)
    assert not result.finite
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_the_update_step_does_not_retrace():
    config, net, learner = _tiny_learner()
    batch, targets = _fixed_batch(config)
    for seed in range(3):
        learner.update(*_fixed_batch(config, seed), 0)
    assert learner.trace_count == 1


def test_same_seed_gives_the_same_first_losses(tmp_path):
    import train

    def first_losses(folder):
        config = dataclasses.replace(cfg.classic(), env_steps=160, start_transitions=120,
                                     batch_size=16, num_simulations=4, log_interval=5,
                                     eval_interval=10_000, checkpoint_interval=10_000,
                                     ray_reanalysis_actors=0)
        trainer = train.Trainer(config, str(folder), None)
        trainer.start_games(list(range(config.num_envs)))
        while len(trainer.buffer) < config.start_transitions:
            trainer.selfplay_step()
        return [trainer.learner.update(*_sample(trainer), trainer.updates).scalars["losses/total"]
                for _ in range(3)]

    def _sample(trainer):
        from targets import reanalyze
        batch = trainer.buffer.sample(trainer.config.batch_size, trainer.rng)
        return batch, reanalyze(batch, trainer.target_model, config=trainer.config,
                                updates=trainer.updates, rng=trainer.rng)

    assert first_losses(tmp_path / "a") == first_losses(tmp_path / "b")


def test_augmentation_is_one_replicate_padded_shift_per_sample():
    config, _, learner = _tiny_learner()
    rng = np.random.default_rng(0)
    B, P, H, W, C = 16, 3, 12, 10, 2
    images = rng.integers(0, 256, size=(B, P, H, W, C), dtype=np.uint8)
    shifted, intensity = learner._augment(images, *learner._augmentation_draws(B))
    shifted, intensity = shifted.numpy(), intensity.numpy().reshape(B)
    pad = config.shift_pad
    padded = np.pad(images, [(0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)], mode="edge")
    found = []
    for b in range(B):
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if np.array_equal(shifted[b], padded[b, :, pad + dy:pad + dy + H,
                                                         pad + dx:pad + dx + W])]
        assert len(matches) == 1, (b, matches)
        found.append(matches[0])
    assert len(set(found)) > 4                      # shifts differ between samples
    assert shifted.dtype == np.uint8
    sigma = config.intensity_sigma
    assert np.all(np.abs(intensity - 1.0) <= 2 * sigma + 1e-6) and np.std(intensity) > 0


def test_bfloat16_mixed_precision_updates_like_float32():
    """mixed_precision on a CPU computes in bfloat16 (float32 weights, no loss scaling): the first
    losses match float32's to bfloat16 accuracy and the update still lowers the loss."""
    import keras

    from learner import precision_policy

    config = dataclasses.replace(cfg.classic(), mixed_precision=True)
    assert precision_policy(config, on_gpu=False) == "mixed_bfloat16"
    assert precision_policy(config, on_gpu=True) == "mixed_float16"
    assert precision_policy(cfg.classic(), on_gpu=False) == "float32"

    def losses(policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            config, net, learner = _tiny_learner(learning_rate=0.05, warmup_fraction=0.0)
            batch, targets = _fixed_batch(config)
            assert not learner.dynamic_loss_scale and float(learner.loss_scale) == 1.0
            return [learner.update(batch, targets, 100).scalars["losses/total"] for _ in range(8)]
        finally:
            keras.mixed_precision.set_global_policy("float32")

    full, mixed = losses("float32"), losses("mixed_bfloat16")
    assert abs(mixed[0] - full[0]) < 0.02 * abs(full[0]) + 0.01, (full[0], mixed[0])
    assert mixed[-1] < 0.8 * mixed[0], mixed


@pytest.mark.parametrize("pool", ["intra_op", "inter_op"])
def test_thread_counts_apply_before_tensorflow_runs_and_are_refused_after(pool):
    """`configure_tensorflow` sets TensorFlow's intra-op (inter-op) thread count in a fresh process;
    once TensorFlow has run, another count is refused with one warning and the first one stays."""
    script = ("import dataclasses, config, learner, tensorflow as tf\n"
              "def configure(threads):\n"
              "    learner.configure_tensorflow(dataclasses.replace(\n"
              "        config.classic(), **{'intra_op_threads': 0, 'inter_op_threads': 0,\n"
              f"                             '{pool}_threads': threads}}))\n"
              f"    print(tf.config.threading.get_{pool}_parallelism_threads())\n"
              "configure(1)\n"
              "tf.constant(1.0) + 1.0\n"
              "configure(1)\n"
              "configure(2)\n")
    result = run_script("-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "1", "1"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {pool}_threads=2 ignored: TensorFlow is already running in "
                        "this process with its own thread count"]


def test_policy_target_smoothing_trains_toward_the_mixture_with_uniform():
    smoothing = 0.2

    def learner(**changes):                 # the same weights, the zero-initialised heads perturbed
        config, net, learner = _tiny_learner(**changes)
        rng = np.random.default_rng(5)
        for variable in net.trainable_variables:
            variable.assign(variable + rng.normal(0, 0.3, variable.shape).astype(np.float32))
        return config, learner

    config, smoothed = learner(policy_target_smoothing=smoothing)
    batch, targets = _fixed_batch(config)
    with_switch = smoothed.update(batch, targets, 0).scalars["losses/policy"]
    mixed = (1 - smoothing) * targets.policies + smoothing / 2          # A = 2
    by_hand = learner()[1].update(batch, targets._replace(policies=mixed), 0).scalars
    without = learner()[1].update(batch, targets, 0).scalars
    assert with_switch == pytest.approx(by_hand["losses/policy"], rel=1e-5)
    assert abs(with_switch - without["losses/policy"]) > 1e-3


def test_online_input_and_consistency_targets_are_augmented_independently():
    """As the official code: o_t gets one shift and intensity, o_{t+1..t+K} share another."""
    from learner import Learner
    from networks import EfficientZeroNet

    config = dataclasses.replace(cfg.smoke(), frame_stack=1, shift_pad=4)
    net = EfficientZeroNet(config, (16, 16, 3), 4)
    learner = Learner(config, net, (16, 16, 3), 4)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 1, 16, 16, 3), dtype=np.uint8)
    frames = np.repeat(image, 1 + config.unroll_steps, axis=1)       # o_t = o_{t+1} = ... pixelwise
    inputs_at = learner._network_inputs(frames, learner._random_draws(32).augmentation)
    online, first, second = (inputs_at(k).numpy() for k in (0, 1, 2))
    np.testing.assert_array_equal(first, second)              # the targets share one transform
    differs = [not np.allclose(online[b], first[b]) for b in range(32)]
    assert sum(differs) >= 28                                   # (1/81 chance of an equal shift)


def _numpy_two_hot(x, support_size):
    x = np.asarray(x, np.float64)
    y = np.sign(x) * (np.sqrt(np.abs(x) + 1) - 1) + 0.001 * x
    y = np.clip(y, -support_size, support_size)
    low = np.floor(y)
    out = np.zeros((*x.shape, 2 * support_size + 1))
    index = (low + support_size).astype(int)
    np.put_along_axis(out, index[..., None], (1 - (y - low))[..., None], axis=-1)
    upper = np.minimum(index + 1, 2 * support_size)
    np.put_along_axis(out, upper[..., None], np.take_along_axis(out, upper[..., None], -1)
                      + np.where(index + 1 <= 2 * support_size, y - low, 0)[..., None], axis=-1)
    return out


def _numpy_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_every_loss_term_equals_a_plain_numpy_computation():
    """A tiny batch with episodes ending inside the unroll (terminated and truncated): the masks,
    the /K, the value-prefix alignment (step k predicts the target of k-1, the LSTM restarting every
    lstm_horizon_len steps) and the SimSiam targets, stop-gradient projections of o_{t+k}."""
    import tensorflow as tf

    config, net, learner = _tiny_learner(lstm_horizon_len=2, batch_size=6)
    rng = np.random.default_rng(4)
    for variable in net.trainable_variables:                  # heads away from their zero start
        variable.assign(variable + rng.normal(0, 0.2, variable.shape).astype(np.float32))
    batch, targets = _fixed_batch(config, seed=3)
    B, K = 6, config.unroll_steps
    remaining = np.array([1, 2, 3, 6, 9, 4])                    # T - t of each sample
    terminated = np.array([True, False, True, False, True, False])
    k = np.arange(K + 1)
    transition = (k[None] < remaining[:, None]).astype(np.float32)
    value = (transition
             + (terminated[:, None] & (k[None] == remaining[:, None]))).astype(np.float32)
    weights = np.array([1.0, 0.5, 0.1, 0.8, 1.0, 0.3], np.float32)
    batch = batch._replace(transition_masks=transition, value_masks=value,
                           importance_weights=weights,
                           reward_targets=rng.uniform(-3, 3, (B, K)).astype(np.float32))

    # The forward pass, step by step, in training mode, in the update's order of calls (with
    # batch_renorm the moving statistics each call updates enter the next one's output); the update
    # then starts from the same moving statistics.
    observations = batch.frames                                 # frame_stack 1: [B, K+1, 4]
    statistics = [v.numpy() for v in learner._statistics]
    projections = []
    with tf.GradientTape() as tape:
        latent = net.represent(observations[:, 0], training=True)
        value_logits, policy_logits = net.predict(latent, training=True)
        values, policies, rewards, predictions = [value_logits], [policy_logits], [], []
        lstm = net.initial_lstm_state(B)
        for step in range(1, K + 1):
            latent, reward_logits, lstm = net.dynamics(latent, batch.actions[:, step - 1], lstm,
                                                       training=True, state_gradient_scale=0.5)
            if step % 2 == 0:
                lstm = net.initial_lstm_state(B)
            value_logits, policy_logits = net.predict(latent, training=True)
            values.append(value_logits)
            policies.append(policy_logits)
            rewards.append(reward_logits)
            # The SimSiam target o_{t+k}: represented after the step's dynamics, projected after
            # the unrolled state (the official order), a constant.
            real_latent = net.represent(observations[:, step], training=True)
            predictions.append(net.predict_projection(net.project(latent, training=True),
                                                      training=True))
            projections.append(net.project(real_latent, training=True).numpy())

        def consistency_of(prediction, target):
            unit = tf.math.l2_normalize(prediction, -1) * tf.math.l2_normalize(target, -1)
            return -tf.reduce_sum(unit, -1)
        # Reference gradient of the consistency term with the targets as constants.
        consistency_term = tf.add_n([consistency_of(predictions[s], projections[s])
                                     * transition[:, s] for s in range(K)])
        reference_objective = tf.reduce_mean(weights * 2.0 * consistency_term) / K

    def cross_entropy(logits, target):
        return -(np.asarray(target, np.float64) * _numpy_log_softmax(logits)).sum(-1)

    S = config.support_size
    value_loss = sum(cross_entropy(values[s].numpy(), _numpy_two_hot(targets.values[:, s], S))
                     * value[:, s] for s in range(K + 1))
    policy_loss = sum(cross_entropy(policies[s].numpy(), targets.policies[:, s]) * transition[:, s]
                      for s in range(K + 1))
    reward_loss = sum(cross_entropy(rewards[s - 1].numpy(),
                                    _numpy_two_hot(batch.reward_targets[:, s - 1], S))
                      * transition[:, s - 1] for s in range(1, K + 1))

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    consistency = sum(-(unit(predictions[s - 1].numpy()) * unit(projections[s - 1])).sum(-1)
                      * transition[:, s - 1] for s in range(1, K + 1))
    def entropy_of(logits):
        log_p = _numpy_log_softmax(logits)
        return -(np.exp(log_p) * log_p).sum(-1)
    entropy = sum(entropy_of(policies[s].numpy()) * transition[:, s] for s in range(K + 1))
    assert config.entropy_loss_coeff == 0.05                      # the classic preset's bonus
    assert config.value_loss_coeff == 1.0                         # and its value weight
    total = np.mean(weights * (reward_loss + policy_loss + 1.0 * value_loss + 2.0 * consistency
                               - 0.05 * entropy)) / K

    def update_terms(update_config):
        """The update's (gradients, grad norm, scalars) under `update_config`, from the saved
        moving statistics."""
        learner.config = update_config
        learner.gradients = tf.function(learner._compute_gradients)
        for variable, saved in zip(learner._statistics, statistics):
            variable.assign(saved)
        return learner.gradients(
            batch.frames, batch.actions, batch.reward_targets, targets.values,
            (targets.policies,), transition, value, weights)

    gradients, _, scalars = update_terms(config)
    assert float(scalars["losses/value"]) == pytest.approx(value_loss.mean() / K, rel=1e-4)
    assert float(scalars["losses/policy"]) == pytest.approx(policy_loss.mean() / K, rel=1e-4)
    assert float(scalars["losses/reward"]) == pytest.approx(reward_loss.mean() / K, rel=1e-4)
    assert float(scalars["losses/consistency"]) == pytest.approx(consistency.mean() / K, rel=1e-4)
    assert float(scalars["losses/policy_entropy"]) == pytest.approx(entropy.mean() / K, rel=1e-4)
    assert float(scalars["losses/total"]) == pytest.approx(total, rel=1e-4)
    # unrolled_value_weight 0.25: the value terms at positions 1..K count a quarter; the rest is
    # unchanged.
    _, _, scalars = update_terms(dataclasses.replace(config, unrolled_value_weight=0.25))
    root_value_loss = cross_entropy(values[0].numpy(),
                                    _numpy_two_hot(targets.values[:, 0], S)) * value[:, 0]
    weighted_value_loss = root_value_loss + 0.25 * (value_loss - root_value_loss)
    assert float(scalars["losses/value"]) == pytest.approx(weighted_value_loss.mean() / K,
                                                           rel=1e-4)
    assert float(scalars["losses/total"]) == pytest.approx(
        total + np.mean(weights * (weighted_value_loss - value_loss)) / K, rel=1e-4)
    # The SimSiam targets are stop-gradient: the representation's gradient from the consistency
    # term alone equals the reference gradient taken with constant targets.
    only_consistency = dataclasses.replace(config, reward_loss_coeff=0.0, policy_loss_coeff=0.0,
                                           value_loss_coeff=0.0, entropy_loss_coeff=0.0,
                                           weight_decay=0.0)
    gradients, _, _ = update_terms(only_consistency)
    reference = tape.gradient(reference_objective, net.trainable_variables)
    reference, _ = tf.clip_by_global_norm([r if r is not None else tf.zeros_like(v) for r, v in
                                           zip(reference, net.trainable_variables)],
                                          config.max_grad_norm)
    for ours, expected in zip(gradients, reference):
        np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_optimizer_steps_match_pytorch_update_rules(optimizer):
    """Weight decay enters the gradient (g + wd w) before SGD's momentum or Adam's moments, as in
    torch.optim.SGD / torch.optim.Adam (betas 0.9, 0.999, eps 1e-8): two steps computed by hand.
    Keras adds eps to sqrt(v) before the bias correction (PyTorch: to sqrt(v_hat)), which differs
    only where |g| is near eps / sqrt(1 - 0.999^t); the reference follows Keras there."""
    import tensorflow as tf

    config, net, learner = _tiny_learner(optimizer=optimizer, weight_decay=0.01)
    variables = net.trainable_variables
    w = [v.numpy().astype(np.float64) for v in variables]
    rng = np.random.default_rng(3)
    steps = [[rng.normal(size=v.shape).astype(np.float32) for v in variables] for _ in range(2)]
    rate, momentum = 0.05, config.momentum
    first_moment = [np.zeros_like(x) for x in w]
    second_moment = [np.zeros_like(x) for x in w]
    for t, gradients in enumerate(steps, start=1):
        learner.optimizer.learning_rate = rate
        learner._apply([tf.constant(g) for g in gradients])
        for i, g in enumerate(gradients):
            decayed = g + 0.01 * w[i]
            if optimizer == "sgd":          # PyTorch: buf = momentum * buf + d; w -= lr * buf
                first_moment[i] = momentum * first_moment[i] + decayed
                w[i] = w[i] - rate * first_moment[i]
            else:
                first_moment[i] = 0.9 * first_moment[i] + 0.1 * decayed
                second_moment[i] = 0.999 * second_moment[i] + 0.001 * decayed ** 2
                step = rate * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
                w[i] = w[i] - step * first_moment[i] / (np.sqrt(second_moment[i]) + 1e-8)
    for variable, expected in zip(variables, w):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_unknown_optimizer_is_a_usage_error():
    with pytest.raises(ValueError, match="optimizer"):
        cfg.apply_overrides(cfg.classic(), ["optimizer=rmsprop"])


def test_clipped_value_targets_are_counted_and_the_needed_support_is_named():
    from networks import support_size_for

    assert support_size_for(259.0) == 16 and support_size_for(2410.0) == 51
    assert support_size_for(0.0) == 1
    config, _, learner = _tiny_learner(support_size=1)
    batch, targets = _fixed_batch(config)                      # value targets uniform in [0, 5]
    value_masks = np.ones_like(targets.values)
    value_masks[:, 3:] = 0.0
    result = learner.update(batch._replace(value_masks=value_masks), targets, 0)
    z = targets.values.astype(np.float64)
    outside = (np.sqrt(z + 1) - 1 + 0.001 * z) > 1                 # h(z) beyond the support [-1, 1]
    expected = outside[:, :3].mean()
    assert 0 < expected < 1
    assert result.scalars["targets/clipped_fraction"] == pytest.approx(expected, rel=1e-6)
    assert result.scalars["targets/max_abs_value_target"] == pytest.approx(z[:, :3].max(), rel=1e-6)


# --- specification: schedules, refresh intervals, exact resume, float16 loss scaling, run clock ---

def test_learning_rate_schedule_warms_up_linearly_then_steps_down():
    """classic: 9,750 updates, warm-up over int(0.01 * 9,750) = 97 of them,
    x0.1 from update 8,000."""
    from learner import learning_rate_at

    config = cfg.classic()
    assert config.total_updates == 9750
    expected = {0: 0.1 / 97, 23: 0.1 * 24 / 97, 96: 0.1, 97: 0.1, 7999: 0.1, 8000: 0.01, 9749: 0.01}
    for updates, rate in expected.items():
        assert learning_rate_at(config, updates) == pytest.approx(rate, rel=1e-12), updates


# The atari_cpu preset (Breakout: 96x96 RGB frames, four stacked, augmentation, lives, bfloat16)
# at smoke's network sizes.
TINY_ATARI = {name: getattr(cfg.smoke(), name) for name in (
    "num_channels", "reduced_channels", "head_hidden_sizes", "lstm_hidden_size",
    "projection_hidden_size", "projection_output_size", "prediction_head_hidden_size",
    "num_envs", "replay_capacity", "max_episode_steps")}


def _trainer_with_data(folder, preset=cfg.classic, **changes):
    import train

    config = dataclasses.replace(preset(), **{
        "env_steps": 400, "start_transitions": 120, "batch_size": 16, "num_simulations": 4,
        "log_interval": 1000, "eval_interval": 10_000, "checkpoint_interval": 10_000,
        "ray_reanalysis_actors": 0, **changes})
    trainer = train.Trainer(config, str(folder), None)
    trainer.start_games(list(range(config.num_envs)))
    while len(trainer.buffer) < config.start_transitions:
        trainer.selfplay_step()
    return trainer


class _EndlessGame:
    """A vector task whose games never end (the 10,000-step cap truncates them)."""

    def __new__(cls):
        import gymnasium as gym

        class EndlessGame(gym.Env):
            observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return np.zeros(3, np.float32), {}

            def step(self, action):
                self.t += 1
                observation = np.array([np.sin(self.t / 10), action - 0.5, 0.0], np.float32)
                return observation, float(action), False, False, {}

        return EndlessGame()


@pytest.mark.parametrize("open_games", [True, False])
def test_updates_follow_the_replay_ratio_from_start_transitions_in_endless_games(tmp_path,
                                                                                open_games):
    """Games of 10,000 steps, 4 envs, start_transitions 200, ratio 0.5: with `replay_open_games`
    the first update comes at env step 200 and after every step the update count is the replay
    ratio's, with no catch-up burst; a store of whole games has nothing to sample in 400 steps."""
    import gymnasium as gym

    import train

    if "EndlessGame-v0" not in gym.registry:
        gym.register("EndlessGame-v0", entry_point=_EndlessGame)
    config = dataclasses.replace(cfg.classic(), **{
        "env_id": "EndlessGame-v0", "num_envs": 4, "env_steps": 400, "start_transitions": 200,
        "updates_per_env_step": 0.5, "batch_size": 16, "num_simulations": 4,
        "max_episode_steps": 10_000, "replay_open_games": open_games, "pipelined_reanalysis": False,
        "ray_reanalysis_actors": 0, "log_interval": 1000, "eval_interval": 10_000,
        "checkpoint_interval": 10_000})
    trainer = train.Trainer(config, str(tmp_path), None)
    trainer.start_games(list(range(config.num_envs)))
    counts = []
    while trainer.env_steps < config.env_steps:
        trainer.play_and_learn()
        counts.append((trainer.env_steps, trainer.updates))
    trainer.close()
    assert trainer.games == 0
    if not open_games:
        assert trainer.updates == 0 and len(trainer.buffer) == 0
        return
    assert counts == [(steps, max(0, (steps - 200) // 2)) for steps in range(4, 404, 4)]
    assert len(trainer.buffer) == 4 * (100 - config.unroll_steps - config.td_steps)


def test_selfplay_and_target_models_take_the_online_weights_at_their_intervals(tmp_path):
    trainer = _trainer_with_data(tmp_path, selfplay_update_interval=2, target_update_interval=3)

    def same(model):
        return all(np.array_equal(a, b) for a, b in zip(model.get_weights(),
                                                         trainer.online.get_weights()))
    for updates in range(1, 7):
        assert trainer.update_once()
        assert same(trainer.selfplay_model) == (updates % 2 == 0), updates
        assert same(trainer.target_model) == (updates % 3 == 0), updates


def test_pipelined_reanalysis_prepares_the_next_batch_with_the_target_model_of_its_time(
        tmp_path):
    """The batch of update 3 is drawn during update 2, before its priorities, and reanalysed in the
    second thread with the target model as it was then (the refresh after
    update 2 waits for it): the targets and the advanced random stream are those of reanalysing it
    here, to the last bit; a checkpoint discards it and rewinds both random streams."""
    from networks import EfficientZeroNet
    from targets import reanalyze

    trainer = _trainer_with_data(tmp_path, target_update_interval=2, pipelined_reanalysis=True)
    assert trainer.pipeline.thread is not None
    before_refresh = EfficientZeroNet(trainer.config, trainer.spec.observation_shape,
                                      trainer.spec.num_actions)
    before_refresh.set_weights(trainer.target_model.get_weights())
    trainer.update_once()
    trainer.update_once()
    assert len(trainer.pipeline.prepared) == 1
    prepared = trainer.pipeline.prepared[0]
    assert not all(np.array_equal(a, b) for a, b in zip(trainer.target_model.get_weights(),
                                                         before_refresh.get_weights()))
    rng = np.random.default_rng()
    rng.bit_generator.state = prepared.reanalysis_rng_state
    expected = reanalyze(prepared.batch, before_refresh, config=trainer.config, updates=2, rng=rng)
    got = prepared.targets.result()
    np.testing.assert_array_equal(got.values, expected.values)
    np.testing.assert_array_equal(got.policies, expected.policies)
    assert trainer.reanalysis_rng.bit_generator.state == rng.bit_generator.state

    trainer.save_checkpoint()
    assert not trainer.pipeline.prepared
    assert trainer.rng.bit_generator.state == prepared.rng_state
    assert trainer.reanalysis_rng.bit_generator.state == prepared.reanalysis_rng_state
    trainer.close()


@pytest.mark.parametrize("preset, changes", [(cfg.classic, {}), (cfg.atari_cpu, TINY_ATARI)],
                         ids=["classic", "atari_cpu"])
def test_a_resumed_run_computes_the_same_next_updates_as_the_uninterrupted_one(tmp_path, preset,
                                                                               changes):
    """Weights, BatchNorm statistics, optimiser momentum, the sampling and augmentation generators,
    the priorities and the counters all come back from a checkpoint: the next updates are equal to
    the last bit, on a vector task and on the Atari path."""
    import keras

    import train
    from targets import reanalyze

    def next_updates(run):
        results = []
        for _ in range(2):
            batch = run.buffer.sample(run.config.batch_size, run.rng)
            targets = reanalyze(batch, run.target_model, config=run.config, updates=run.updates,
                                rng=run.rng)
            result = run.learner.update(batch, targets, run.updates)
            run.buffer.update_priorities(batch.indices, result.priorities, batch.collected_at)
            run.updates += 1
            results.append((batch.indices.tolist(), result.scalars, result.priorities.tolist()))
        return results

    try:
        trainer = _trainer_with_data(tmp_path / "run", preset, **changes)
        for _ in range(3):
            trainer.update_once()
        checkpoint = checkpoints.load_checkpoint(trainer.save_checkpoint())
        resumed = train.Trainer(trainer.config, str(tmp_path / "run"), checkpoint)
        assert resumed.updates == 3
        assert next_updates(resumed) == next_updates(trainer)
    finally:
        keras.mixed_precision.set_global_policy("float32")     # atari_cpu computes in bfloat16


def test_evaluations_before_the_last_take_the_interim_cap(tmp_path):
    """With interim_eval_max_episode_steps = 3, an evaluation during training stops every CartPole
    game at 3 steps; the final one (at the run's last update) plays to the protocol's cap, and an
    untrained CartPole game ends on its own after more than 3 steps."""
    trainer = _trainer_with_data(tmp_path, interim_eval_max_episode_steps=3, eval_episodes=2)
    trainer.evaluate()
    interim = json.load(open(tmp_path / "eval" / "eval-00000000.json"))
    assert interim["lengths"] == [3, 3]
    trainer.updates = trainer.config.total_updates
    trainer.evaluate()
    final = json.load(open(tmp_path / "eval" / f"eval-{trainer.updates:08d}.json"))
    assert 3 < min(final["lengths"]) <= max(final["lengths"]) < 500


def test_float16_loss_scale_skips_overflowing_steps_halves_and_grows():
    """mixed_float16's dynamic loss scale: gradients that overflow float16 leave the weights as they
    were, count as finite (the run goes on) with lr logged 0, and halve the scale; 2,000 finite
    steps in a row double it."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config, net, learner = _tiny_learner()
        assert learner.dynamic_loss_scale and float(learner.loss_scale) == 2.0 ** 15
        batch, targets = _fixed_batch(config)
        learner.loss_scale.assign(2.0 ** 24)                 # loss x 2^24 overflows float16
        before = [w.copy() for w in net.get_weights()]
        result = learner.update(batch, targets, 100)
        assert result.finite and result.scalars["losses/lr"] == 0.0
        assert float(learner.loss_scale) == 2.0 ** 23
        assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
        learner.loss_scale.assign(2.0 ** 4)
        learner._finite_in_a_row = 1998
        assert learner.update(batch, targets, 100).scalars["losses/lr"] > 0
        assert float(learner.loss_scale) == 2.0 ** 4
        learner.update(batch, targets, 100)
        assert float(learner.loss_scale) == 2.0 ** 5
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_run_clock_projects_online_then_offline_time(monkeypatch):
    """The first update (it compiles the graph) starts the clock; 60 s for the next 1,000 env steps
    (50 updates timed at 0.5 s each): 9,000 steps left x 0.06 s + 500 offline updates x 0.5 s."""
    import train

    config = dataclasses.replace(cfg.classic(), env_steps=11_000, start_transitions=1_000,
                                 updates_per_env_step=0.05, offline_updates=500)
    clock = train.RunClock(config)
    now = [100.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    assert clock.seconds_left(1_000, 0) is None
    clock.record_update(30.0, 1_000, 0)                       # compiling: not counted
    for i in range(1, train.PROJECTION_UPDATES + 1):
        assert clock.seconds_left(1_000 + 20 * i, i) is None
        clock.record_update(0.5, 1_000 + 20 * i, i)
    now[0] = 160.0
    assert clock.seconds_left(2_000, 50) == pytest.approx(9_000 * 0.06 + 500 * 0.5)
    assert clock.seconds_left(11_000, 600) == pytest.approx(400 * 0.5)
    assert clock.seconds_left(11_000, 1_000) == 0.0
    assert [train.format_duration(s) for s in (45, 720, 12_000, 648_000)] == \
        ["45 s", "12 min", "3 h 20 min", "7.5 days"]


def test_run_clock_starts_the_online_clock_after_a_burst_of_updates_at_one_env_step(monkeypatch):
    """Whole episodes reach `start_transitions` late, and the updates due by then come at one env
    step: the online clock starts after them (here at t = 110 s, after 60 updates)."""
    import train

    config = dataclasses.replace(cfg.classic(), env_steps=11_000, start_transitions=1_000,
                                 updates_per_env_step=0.05, offline_updates=500)
    clock = train.RunClock(config)
    now = [100.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    for i in range(60):
        now[0] += 10.0 / 60
        clock.record_update(0.5, 1_200, i)
        assert clock.seconds_left(1_200, i + 1) is None
    for i in range(60, 60 + train.PROJECTION_UPDATES):
        clock.record_update(0.5, 1_200 + 20 * (i - 59), i)
        if i < 60 + train.PROJECTION_UPDATES - 2:
            assert clock.seconds_left(1_200 + 20 * (i - 59), i + 1) is None
    now[0] = 170.0
    assert clock.seconds_left(2_200, 110) == pytest.approx(8_800 * 0.06 + 500 * 0.5)


def test_a_long_td_horizon_infers_only_roots_and_bootstraps_and_keeps_the_targets(tmp_path):
    """With n > K+1 reanalysis infers two windows of K+1 positions instead of all K+n+1; the real
    network's TD targets equal those computed from every position, to the last bit."""
    from targets import reanalyze

    trainer = _trainer_with_data(tmp_path, td_steps=12)
    batch = trainer.buffer.sample(16, trainer.rng)
    targets = reanalyze(batch, trainer.target_model, config=trainer.config, updates=0,
                        rng=np.random.default_rng(0))
    every_position = trainer.target_model.initial_inference_sequence(batch.frames).value
    bootstrap = np.take_along_axis(every_position.reshape(16, -1), batch.bootstrap_positions, 1)
    assert (batch.bootstrap_positions < 12).any()             # some bootstraps are an early o_T
    expected = (batch.td_rewards + batch.bootstrap_discounts * bootstrap) * batch.transition_masks
    np.testing.assert_array_equal(targets.values, expected.astype(np.float32))
