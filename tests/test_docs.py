"""The scripts under docs/ run from any folder without PYTHONPATH: each answers --help."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.py"))
                 + glob.glob(os.path.join(ROOT, "docs", "probes", "*.py")))


def test_every_docs_script_answers_help_from_another_folder(tmp_path):
    assert len(SCRIPTS) >= 12
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    running = {script: subprocess.Popen([sys.executable, script, "--help"], cwd=tmp_path,
                                        env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
               for script in SCRIPTS}
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{script}: {stderr[-1500:]}"
        assert stdout.startswith("usage:"), script


def test_compressed_metrics_read_as_the_plain_file(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import run_data

    text = ("updates,env_steps,wall_seconds,key,value\n0,16,0.5,eval/mean,1.5\n"
            "100,2016,9.0,eval/mean,2\n")
    (tmp_path / "metrics.csv").write_text(text)
    plain = list(run_data.metrics_rows(str(tmp_path)))
    run_data.compress(str(tmp_path))
    assert not (tmp_path / "metrics.csv").exists()
    assert list(run_data.metrics_rows(str(tmp_path))) == plain
    assert [row["value"] for row in plain] == ["1.5", "2"]
    first = (tmp_path / "metrics.csv.gz").read_bytes()
    (tmp_path / "metrics.csv").write_text(text)
    run_data.compress(str(tmp_path))
    assert (tmp_path / "metrics.csv.gz").read_bytes() == first           # deterministic bytes


def test_every_figure_is_regenerated_pixel_for_pixel_from_the_committed_run_data(tmp_path):
    import matplotlib.image
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import make_figures

    written = sorted(os.path.basename(path) for path in make_figures.make(str(tmp_path)))
    committed = sorted(name for name in os.listdir(os.path.join(ROOT, "docs", "figures"))
                       if name.endswith(".png"))
    assert written == committed
    for name in written:
        new = matplotlib.image.imread(tmp_path / name)
        old = matplotlib.image.imread(os.path.join(ROOT, "docs", "figures", name))
        assert np.array_equal(new, old), f"docs/figures/{name} differs from its data"


def test_the_timed_first_hour_runs_the_readme_commands_in_the_new_environment(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import first_hour

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        commands = first_hour.first_hour_commands(file.read())
    assert commands[0] == "pip install -r requirements.txt"
    assert [command.split()[0] for command in commands] == ["pip", "python", "python", "pytest",
                                                            "pytest"]
    (tmp_path / "runs" / "CartPole-v1-classic-seed0-1").mkdir(parents=True)
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    assert first_hour.in_environment(commands[2], str(tmp_path / "venv"), str(tmp_path)) == [
        venv_python, "evaluate.py", "--checkpoint", "runs/CartPole-v1-classic-seed0-1",
        "--episodes", "10"]
    assert first_hour.in_environment('pytest -m "not slow"', str(tmp_path / "venv"),
                                     str(tmp_path)) == [venv_python, "-m", "pytest", "-m",
                                                        "not slow"]
