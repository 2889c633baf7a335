"""Plot learning curves from runs' metrics (metrics.csv or metrics.csv.gz) into a PNG
(used for the README figures).

    python docs/plot_curves.py --key eval/mean --out docs/figures/cartpole.png \
        runs/CartPole-v1-classic-seed*
Each run folder becomes one line (labelled by its folder name); the x axis is env steps.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_data import metrics_rows  # noqa: E402


def read_curve(run_dir: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in metrics_rows(run_dir):
        if row["key"] == key:
            steps.append(int(row["env_steps"]))
            values.append(float(row["value"]))
    return steps, values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.csv")
    parser.add_argument("--key", default="eval/mean", help="metric to plot (default eval/mean)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--hline", type=float, default=None, help="a reference level to draw")
    args = parser.parse_args(argv)
    figure, axes = plt.subplots(figsize=(6, 4))
    for run_dir in args.runs:
        steps, values = read_curve(run_dir, args.key)
        if not steps:
            print(f"error: no '{args.key}' in {run_dir}/metrics.csv", file=sys.stderr)
            return 2
        axes.plot(steps, values, marker="o", markersize=3,
                  label=os.path.basename(run_dir.rstrip("/")))
    if args.hline is not None:
        axes.axhline(args.hline, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("env steps")
    axes.set_ylabel(args.key)
    axes.set_title(args.title or args.key)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    plt.close(figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
