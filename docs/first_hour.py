"""A newcomer's first hour, timed: the README's "First hour" commands, run one after the other in a
fresh clone of this repository with a fresh virtual environment, as a new user would type them.

    python docs/first_hour.py [--clone-to DIR] [--json docs/first_hour.json]

`pip`, `python` and `pytest` are the new environment's; `runs/<run>` is the run that the command
before it made. It prints each command's wall time and exit status and stops at the first failure.
"""

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
README = os.path.join(ROOT, "README.md")
SECTION = "## First hour"


def first_hour_commands(readme_text: str) -> list[str]:
    """The command lines of the code block under the README's "First hour" heading, comments cut."""
    block = readme_text.split(SECTION, 1)[1].split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.splitlines()
            if line.split("#", 1)[0].strip()]


def in_environment(command: str, venv: str, clone: str) -> list[str]:
    """`command` as the new environment runs it, with `runs/<run>` the newest run folder."""
    words = shlex.split(command)
    tools = {"pip": [os.path.join(venv, "bin", "python"), "-m", "pip"],
             "python": [os.path.join(venv, "bin", "python")],
             "pytest": [os.path.join(venv, "bin", "python"), "-m", "pytest"]}
    if words[0] not in tools:
        raise ValueError(f"the README's first hour runs '{words[0]}', which this script "
                         "cannot time")
    if "runs/<run>" in words:
        newest = max(glob.glob(os.path.join(clone, "runs", "*")), key=os.path.getmtime)
        words[words.index("runs/<run>")] = os.path.relpath(newest, clone)
    return tools[words[0]] + words[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clone-to", default=None,
                        help="an empty folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the timings to this file")
    args = parser.parse_args()
    clone = args.clone_to or tempfile.mkdtemp(prefix="first-hour-")
    subprocess.run(["git", "clone", "--quiet", ROOT, clone], check=True)
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True,
                          capture_output=True, text=True).stdout.strip()
    venv = os.path.join(clone, ".venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    with open(os.path.join(clone, "README.md"), encoding="utf-8") as file:
        commands = first_hour_commands(file.read())
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    environment.pop("PYTHONPATH", None)
    timings = []
    for command in commands:
        start = time.monotonic()
        with open(os.path.join(clone, "first-hour.log"), "a") as log:
            status = subprocess.run(in_environment(command, venv, clone), cwd=clone,
                                    env=environment, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        timings.append({"command": command, "seconds": round(seconds, 1), "status": status})
        print(f"{seconds / 60:6.1f} min  status {status}  {command}", flush=True)
        if status != 0:
            break
    from learner import machine_description

    summary = {"code": code, "machine": machine_description(), "clone": clone,
               "commands": timings}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=1)
    return 0 if all(entry["status"] == 0 for entry in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
