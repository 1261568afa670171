"""Activation checkpointing (``remat=True``): what it saves in memory and costs in time, per framework.

For each framework, one training step (forward, backward, AdamW; dropout on) of the same model
with and without remat, through ``dlzoo.zoo.bench.run`` (the benchmark's low-overhead step in
every framework; ``dlzoo bench ARCH --set remat=true`` runs one side by hand). Each (framework,
remat) pair runs in a fresh process, so the peak-memory growth of one cannot hide in memory the
allocator kept from another; the two processes of a framework run back to back, in alternating
order from one framework to the next. Printed: peak step memory (growth of the peak resident set
over three steps: activations, gradients, optimizer temporaries, compiled buffers) and median
step time of each, and the ratios remat / no remat. docs/bench.md keeps the table.

    nice python benchmarks/remat.py gpt --set num_layers=4 --set hidden_size=384 ...
    nice python benchmarks/remat.py --json ...   (one JSON document: the setup and the rows)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(args) -> None:
    from dlzoo.zoo.bench import run

    overrides = {**dict(_pair(p) for p in args.set), "remat": args.remat}
    report = run(
        args.arch,
        args.preset,
        batch=args.batch,
        seq_len=args.seq_len,
        image_size=args.image_size,
        implementations=[args.framework],
        trials=args.trials,
        overrides=overrides,
    )
    row = report["results"][0]
    print(
        json.dumps(
            {"median_s": row["median_s"], "iqr_s": row["iqr_s"], "peak": row["peak_step_memory_bytes"], "compile_s": row["compile_s"]}
        )
    )


def _pair(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--frameworks", nargs="*", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--remat", type=json.loads, default=False, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from dlzoo.zoo import installed_frameworks

    frameworks = args.frameworks or installed_frameworks()
    passed = [a for a in sys.argv[1:] if a not in ("--json",)]
    rows = []
    for i, framework in enumerate(frameworks):
        measured = {}
        for remat in (False, True) if i % 2 == 0 else (True, False):
            command = [sys.executable, __file__, *passed, "--child", "--framework", framework, "--remat", json.dumps(remat)]
            done = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
            )
            if done.returncode != 0:
                sys.exit(f"error: {framework} remat={remat} failed:\n{done.stderr[-2000:]}")
            measured[remat] = json.loads(done.stdout.strip().splitlines()[-1])
        off, on = measured[False], measured[True]
        rows.append(
            {
                "framework": framework,
                "peak_bytes": {"no_remat": off["peak"], "remat": on["peak"]},
                "median_s": {"no_remat": off["median_s"], "remat": on["median_s"]},
                "compile_s": {"no_remat": off["compile_s"], "remat": on["compile_s"]},
                "memory_ratio": on["peak"] / off["peak"] if on["peak"] and off["peak"] else None,
                "time_ratio": on["median_s"] / off["median_s"],
            }
        )
    load = os.getloadavg()
    document = {
        "arch": args.arch,
        "preset": args.preset,
        "set": args.set,
        "batch": args.batch,
        "trials": args.trials,
        "load_average": load,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return
    print(f"{args.arch} {args.preset} {' '.join(args.set)} batch {args.batch}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| framework | peak MiB, no remat | peak MiB, remat | memory remat/no | step ms, no remat | step ms, remat | time remat/no |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mib = {k: (v / 2**20 if v else float("nan")) for k, v in r["peak_bytes"].items()}
        ms = {k: v * 1e3 for k, v in r["median_s"].items()}
        memory = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] else "n/a"
        print(
            f"| {r['framework']} | {mib['no_remat']:.0f} | {mib['remat']:.0f} | {memory} | "
            f"{ms['no_remat']:.0f} | {ms['remat']:.0f} | {r['time_ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
