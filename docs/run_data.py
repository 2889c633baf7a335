"""Reading a run folder's metrics (docs/plot_curves.py, docs/results_table.py).

A run writes `metrics.csv` (updates, env_steps, wall_seconds, key, value); the folders committed
under docs/runs keep it gzip-compressed as `metrics.csv.gz`, with the same rows.

    python docs/run_data.py --gzip docs/runs/<run> ...     # compress a run's metrics.csv in place
"""

import argparse
import csv
import gzip
import os
import shutil


def metrics_rows(run_dir: str):
    """The rows of a run's metrics.csv or metrics.csv.gz, as dicts of strings."""
    path = os.path.join(run_dir, "metrics.csv")
    if os.path.exists(path):
        with open(path, newline="") as file:
            yield from csv.DictReader(file)
        return
    with gzip.open(path + ".gz", "rt", newline="") as file:
        yield from csv.DictReader(file)


def compress(run_dir: str) -> None:
    """metrics.csv -> metrics.csv.gz (deterministic: no file name or time in the header)."""
    path = os.path.join(run_dir, "metrics.csv")
    with open(path, "rb") as source, open(path + ".gz", "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as target:
        shutil.copyfileobj(source, target)
    os.remove(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gzip", nargs="+", metavar="RUN_DIR", required=True,
                        help="run folders whose metrics.csv to compress")
    for run_dir in parser.parse_args().gzip:
        compress(run_dir)


if __name__ == "__main__":
    main()
