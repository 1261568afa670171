"""Start-up time of the commands that must stay light (`dlzoo --help`, `dlzoo list`).

    python benchmarks/cli_startup.py [--runs 10]

Prints the median and worst wall time of each command over fresh processes, its median as a
ratio to a bare `python -c pass` (the headline: it cancels most of a shared machine's load), and
which deep-learning frameworks each command imported (none is the contract). Commands run in
interleaved rounds (one of each per round), so a burst of load hits them all alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    # the CLI library alone: typer (the CLI before issue 20; it imports pydantic where installed) vs click
    "python -c 'import typer'": [sys.executable, "-c", "import typer"],
    "python -c 'import click'": [sys.executable, "-c", "import click"],
    "dlzoo --help": [sys.executable, "-m", "dlzoo.cli", "--help"],
    "dlzoo list": [sys.executable, "-m", "dlzoo.cli", "list"],
    "dlzoo info resnet -p 50": [sys.executable, "-m", "dlzoo.cli", "info", "resnet", "-p", "50"],
}
HEAVY = ("torch", "jax", "flax", "keras", "tensorflow", "haiku", "equinox", "transformers")


def imported(args: list[str]) -> list[str]:
    probe = (
        "import sys, runpy; sys.argv = ['dlzoo'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('dlzoo.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *args[3:]], capture_output=True, text=True)
    return [m for m in result.stderr.strip().splitlines()[-1].split(",") if m] if result.stderr.strip() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':28} {'median s':>9} {'worst s':>9} {'x pass':>7}  frameworks imported")
    for name, command in COMMANDS.items():
        median = statistics.median(times[name])
        heavy = "-" if name.startswith("python") else (", ".join(imported(command)) or "none")
        print(f"{name:28} {median:9.3f} {max(times[name]):9.3f} {median / base:7.1f}  {heavy}")


if __name__ == "__main__":
    main()
