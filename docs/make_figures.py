"""Regenerate every figure in docs/figures from the run data in docs/runs.

    python docs/make_figures.py                   # rewrite docs/figures/*.png
    python docs/make_figures.py --out-dir /tmp/x  # write them elsewhere (a test compares pixels)

docs/figures/commands.txt holds one `python docs/plot_curves.py ...` command per figure, as a reader
would type it from the repository root; this script runs each in-process.
"""

import argparse
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = os.path.join(ROOT, "docs", "figures", "commands.txt")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import plot_curves  # noqa: E402


def figure_commands() -> list[list[str]]:
    """The plot_curves.py arguments of every figure, paths relative to the repository root."""
    with open(COMMANDS) as file:
        lines = [line for line in file.read().splitlines() if line.strip()]
    prefix = ["python", "docs/plot_curves.py"]
    commands = [shlex.split(line) for line in lines]
    for command in commands:
        if command[:2] != prefix:
            raise ValueError(f"{COMMANDS}: not a plot_curves.py command: {shlex.join(command)}")
    return [command[2:] for command in commands]


def make(out_dir: str | None = None) -> list[str]:
    """Run every command, with --out moved to `out_dir` if given; returns the files written."""
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    written = []
    for arguments in figure_commands():
        arguments = [os.path.join(ROOT, a) if a.startswith("docs/") else a for a in arguments]
        out = arguments.index("--out") + 1
        if out_dir is not None:
            arguments[out] = os.path.join(out_dir, os.path.basename(arguments[out]))
        if plot_curves.main(arguments) != 0:
            raise RuntimeError(f"plot_curves.py failed: {shlex.join(arguments)}")
        written.append(arguments[out])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=None,
                        help="folder for the PNGs (default docs/figures)")
    for path in make(parser.parse_args().out_dir):
        print(path)


if __name__ == "__main__":
    main()
