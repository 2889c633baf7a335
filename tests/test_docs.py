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
