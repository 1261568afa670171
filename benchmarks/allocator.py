"""The C allocator under the training step: `dlzoo bench` in fresh processes, one per allocator
(glibc's malloc, then each caching allocator found: tcmalloc, jemalloc, preloaded with
LD_PRELOAD), in alternating rounds.

    python benchmarks/allocator.py gpt --preset 124M --batch 4 --seq-len 256 -f torch flax haiku
    python benchmarks/allocator.py vit --preset B/16 --image-size 224 --batch 8 --rounds 2

Prints, per implementation, the median step time under each allocator, its ratio to glibc's
in the same round order, and the page faults per step. glibc's malloc returns every freed block
above its mmap threshold (32 MiB at most) to the kernel, so a step that allocates its
activations anew faults them in, zero-filled, every step; a caching allocator keeps them.
Ratios between processes carry the machine's drift: run rounds >= 2 and read them beside the
fault counts, which do not drift.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import statistics
import subprocess
import sys

CANDIDATES = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}


def allocators() -> dict[str, str | None]:
    """name -> library to preload (None: the C library's own malloc)."""
    found = {"glibc": None}
    for name, library in CANDIDATES.items():
        path = ctypes.util.find_library(library)
        if path:
            found[name] = path
    return found


def bench(args, preload: str | None) -> dict:
    command = [sys.executable, "-m", "dlzoo.cli", "bench", args.arch, "--preset", args.preset, "--batch", str(args.batch)]
    command += ["--trials", str(args.trials), "--json"]
    if args.seq_len:
        command += ["--seq-len", str(args.seq_len)]
    if args.image_size:
        command += ["--image-size", str(args.image_size)]
    for name in args.frameworks:
        command += ["-f", name]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"error: dlzoo bench failed under {preload or 'glibc'}: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("-f", "--frameworks", nargs="*", default=[])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--allocators", nargs="*", help="a subset of glibc, tcmalloc, jemalloc")
    args = parser.parse_args()

    found = {k: v for k, v in allocators().items() if not args.allocators or k in args.allocators or k == "glibc"}
    medians: dict[str, dict[str, list[float]]] = {}
    faults: dict[str, dict[str, list[int]]] = {}
    for round_ in range(args.rounds):
        names = list(found) if round_ % 2 == 0 else list(found)[::-1]
        for name in names:
            report = bench(args, found[name])
            assert report["allocator"] == ("glibc malloc" if name == "glibc" else name), report["allocator"]
            for row in report["results"]:
                medians.setdefault(row["implementation"], {}).setdefault(name, []).append(row["median_s"])
                faults.setdefault(row["implementation"], {}).setdefault(name, []).append(row["page_faults_per_step"])
    print(f"{args.arch} {args.preset}, batch {args.batch}; {args.rounds} round(s) of {args.trials} trials; load {os.getloadavg()[0]:.1f}")
    header = "".join(f" | {name} ms (x glibc, faults/step)" for name in found)
    print(f"implementation{header}")
    for implementation, by_allocator in medians.items():
        base = statistics.median(by_allocator["glibc"])
        cells = []
        for name in found:
            ms = statistics.median(by_allocator[name])
            cells.append(f"{ms * 1e3:.0f} ({ms / base:.2f}, {statistics.median(faults[implementation][name]) / 1e3:.0f}k)")
        print(f"{implementation} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
