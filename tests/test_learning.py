"""It learns: the command a user would type solves CartPole-v1 (issue 6).

`python train.py --env CartPole-v1 --config classic --seed 2` must reach a mean greedy evaluation
return of at least 195 over 10 episodes within 20,000 env steps. The run takes about 7 minutes on a
2-core CPU; the README records all three seeds' curves.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLVED = 195.0
ENV_STEP_BUDGET = 20_000
RUN_TIMEOUT_SECONDS = 1_080


@pytest.mark.slow
def test_classic_preset_solves_cartpole(tmp_path):
    run_dir = tmp_path / "cartpole"
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--env", "CartPole-v1",
               "--config", "classic", "--seed", "2", "--run-dir", str(run_dir)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
    assert finished.returncode == 0, finished.stderr[-2000:]
    evaluations = []
    for path in sorted(glob.glob(str(run_dir / "eval" / "eval-*.json"))):
        with open(path) as file:
            evaluations.append(json.load(file))
    assert evaluations, "the run wrote no evaluation"
    for evaluation in evaluations:
        assert len(evaluation["returns"]) == 10
        assert evaluation["mean"] == pytest.approx(sum(evaluation["returns"]) / 10)
    solved = [e for e in evaluations if e["mean"] >= SOLVED and e["env_steps"] <= ENV_STEP_BUDGET]
    best = max(e["mean"] for e in evaluations)
    assert solved, f"best evaluation mean {best:.1f} < {SOLVED}"
