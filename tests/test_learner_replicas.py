"""The learner's update split over two devices (`learner_replicas=2`, tf.distribute's
MirroredStrategy) computes what one device computes: the same batches and targets give the same
priorities, losses, weights, BatchNorm statistics, observation-normaliser moments and optimiser
state, up to float rounding. Cases: images with the shift and intensity augmentation, Batch
Renormalization and the value-prefix LSTM (`smoke`); continuous actions with the observation
normaliser and the Monte Carlo entropy's draws (`pendulum`).

The two devices are logical CPU devices, which TensorFlow must create before it starts, so each
case runs in a fresh interpreter."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATES = 2

# One trainer on one device fills its buffer by self-play, then samples and reanalyses the batches;
# a trainer with learner_replicas=2 starts from its online weights; both learners update on the
# same batches and targets. Prints the largest differences as JSON.
COMPARE = """
import dataclasses, json, sys
import tensorflow as tf
[cpu] = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import config as cfg, train
from targets import reanalyze

preset, env_id, changes, updates, run_dir = sys.argv[1:]
config = dataclasses.replace(cfg.get_config(preset), env_id=env_id, **json.loads(changes))
single = train.Trainer(config, run_dir + "/single", None)
single.start_games(list(range(config.num_envs)))
while len(single.buffer) < config.start_transitions:
    single.selfplay_step()
split = train.Trainer(dataclasses.replace(config, learner_replicas=2), run_dir + "/split", None)
assert split.learner.strategy.num_replicas_in_sync == 2
assert all(len(v.value.values) == 2 for v in split.online.variables)   # on both devices
split.online.set_weights(single.online.get_weights())
initial = [v.numpy() for v in single.online.trainable_variables]
gaps = {"priorities": 0.0, "scalars": 0.0}
for k in range(int(updates)):
    batch = single.buffer.sample(config.batch_size, single.rng)
    targets = reanalyze(batch, single.target_model, config=config, updates=k, rng=single.rng)
    one, two = single.learner.update(batch, targets, k), split.learner.update(batch, targets, k)
    assert one.finite and two.finite
    gaps["priorities"] = max(gaps["priorities"],
                             float(np.abs(one.priorities - two.priorities).max()))
    gaps["scalars"] = max(gaps["scalars"], max(abs(one.scalars[key] - two.scalars[key])
                                               / max(1.0, abs(one.scalars[key]))
                                               for key in one.scalars))
for name, first, second in (
        ("trainable", single.online.trainable_variables, split.online.trainable_variables),
        ("statistics", single.learner._statistics, split.learner._statistics),
        ("optimizer", single.learner.optimizer.variables, split.learner.optimizer.variables)):
    gaps[name] = max(float((np.abs(np.asarray(a) - np.asarray(b))
                            / np.maximum(1.0, np.abs(np.asarray(a)))).max())
                     for a, b in zip(first, second))
gaps["moved"] = max(float(np.abs(v.numpy() - a).max())
                    for v, a in zip(single.online.trainable_variables, initial))
print(json.dumps(gaps))
"""


@pytest.mark.slow
@pytest.mark.parametrize("preset, env_id, changes", [
    ("smoke", "ALE/Breakout-v5", {"batch_size": 8, "num_envs": 2, "start_transitions": 40}),
    ("pendulum", "Pendulum-v1", {"batch_size": 16, "num_envs": 2, "start_transitions": 64}),
], ids=["images-augmentation-batch-renorm", "continuous-normaliser-entropy"])
def test_two_devices_update_as_one(tmp_path, preset, env_id, changes):
    changes = {"num_simulations": 4, "unroll_steps": 2, "eval_interval": 10_000,
               "checkpoint_interval": 10_000, **changes}
    result = subprocess.run(
        [sys.executable, "-c", COMPARE, preset, env_id, json.dumps(changes), str(UPDATES),
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = json.loads(result.stdout.strip().splitlines()[-1])
    print(gaps)
    # After one update the two differ by about 1e-6 (float32 sums in another order); the second
    # update carries that on.
    assert gaps["priorities"] < 1e-4                 # absolute
    assert gaps["scalars"] < 1e-5                    # the others relative to max(1, |x|)
    assert gaps["trainable"] < 1e-4
    assert gaps["statistics"] < 1e-4
    assert gaps["optimizer"] < 1e-4
    assert gaps["moved"] > 100 * gaps["trainable"]   # the updates moved the weights far more


def test_more_replicas_than_devices_or_an_uneven_split_exit_with_one_line(tmp_path):
    from test_train import assert_one_line_usage_error, run_script

    for setting, expected in (
            ("learner_replicas=8", "'learner_replicas' must be at most the GPUs TensorFlow sees"),
            ("learner_replicas=3", "'learner_replicas' must be a divisor of batch_size, got 3")):
        line = assert_one_line_usage_error(run_script(
            "train.py", "--config", "smoke", "--run-dir", str(tmp_path / "run"), "--set",
            setting))
        assert expected in line, line
