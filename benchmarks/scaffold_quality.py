"""Quality of the projects `dlzoo new` writes: train each default project on digits and report the
held-out test accuracy, the wall time of the whole training command and the time per step.
Text projects (`--text`): gpt lm, bert mlm and bert classify on data from the Python standard
library, each against its baseline (issue 12): test bits per byte vs the unigram model of the
training tokens; masked-token accuracy vs always the most frequent token; classification accuracy
vs the majority class.

    python benchmarks/scaffold_quality.py --text --framework torch --write

    python benchmarks/scaffold_quality.py                          # every arch x framework with an engine
    python benchmarks/scaffold_quality.py --arch vit --framework torch --set train.threads=1
    python benchmarks/scaffold_quality.py --write                  # also record into scaffold/results.json

The target (issue 11): the default (tiny) ResNet and ViT projects reach >= 95% test accuracy
within 3 minutes of training on a 2-core CPU. Defaults were tuned on the validation split only;
the test split (20% of each class, drawn from the seed) is reported once, at the end of a run.
`--write` records the numbers that the generated READMEs quote (scaffold/results.json). The
machine's load average is recorded beside them: on a shared machine, time per step rises with
the load while the accuracy does not change.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core {cpu} CPU ({platform.system()})"


def measure(arch: str, framework: str, sets: list[str], parent: Path, task: str | None = None) -> dict:
    from dlzoo.scaffold.generate import new_project

    name = f"q_{framework}_{arch}" + (f"_{task}" if task else "")
    project = Path(new_project(name, arch=arch, framework=framework, task=task, parent=parent)["path"])
    env = {**os.environ, "PYTHONPATH": str(project), "KERAS_BACKEND": "jax"}
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", f"{name}.train", *[f"--set={s}" for s in sets]], cwd=project, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)  # all cores together
    if done.returncode != 0:
        raise SystemExit(f"{arch}/{framework} failed:\n{done.stderr[-3000:]}")
    run = project / "runs" / "default"
    test = json.loads((run / "test.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    meta = next(r for r in lines if r["type"] == "meta")
    train = [r for r in lines if r["type"] == "train"]
    step_seconds = sorted(meta["batch_size"] / r["throughput"] for r in train)
    if task is not None:
        base = test["baselines"]
        extra = {
            "task": task,
            "test_loss": test["test_loss"],
            "baseline": {
                "lm": base.get("unigram_val_bpb"),
                "mlm": base.get("most_frequent_token_share"),
                "classify": base.get("majority_test_accuracy"),
            }[task],
        }
        extra.update({k: test[k] for k in ("test_bpb", "test_macro_f1") if k in test})
        if task == "classify":
            extra["chance_accuracy"] = base["chance_accuracy"]
    else:
        extra = {}
    return {
        **extra,
        "arch": arch,
        "framework": framework,
        "test_accuracy": test["test_accuracy"],
        "test_count": test["test_count"],
        "best_val_accuracy": test["best_val_accuracy"],
        "steps": test["step"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "train_seconds": sum(step_seconds),
        "ms_per_step": 1000 * step_seconds[len(step_seconds) // 2],
        "batch_size": meta["batch_size"],
        "overrides": sets,
        "load_average": [load_before, os.getloadavg()[0]],
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    from dlzoo.scaffold.generate import RESULTS, TEMPLATES
    from dlzoo.zoo.frameworks import FRAMEWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", action="append", choices=("resnet", "vit"))
    parser.add_argument("--framework", action="append", choices=FRAMEWORKS)
    parser.add_argument("--set", action="append", default=[], help="training override, e.g. train.threads=1")
    parser.add_argument("--write", action="store_true", help="record the results in scaffold/results.json")
    parser.add_argument("--text", action="store_true", help="the text projects (gpt lm, bert mlm, bert classify)")
    parser.add_argument("--task", action="append", choices=("lm", "mlm", "classify"), help="with --text: only these tasks")
    args = parser.parse_args()
    if args.text:
        return text_main(args)
    frameworks = args.framework or [f for f in FRAMEWORKS if (TEMPLATES / "engines" / f"engine_{f}.py.j2").exists()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or ["resnet", "vit"]:
            for framework in frameworks:
                row = measure(arch, framework, args.set, Path(tmp))
                rows.append(row)
                print(
                    f"{arch:6} {framework:8} test {100 * row['test_accuracy']:5.1f}%  (val {100 * row['best_val_accuracy']:5.1f}%)  "
                    f"{row['wall_seconds']:6.1f} s wall  {row['cpu_seconds']:6.1f} s cpu  {row['ms_per_step']:6.1f} ms/step  "
                    f"{row['steps']} steps  "
                    f"load {row['load_average'][0]:.1f}",
                    flush=True,
                )
    print(
        "\n| arch | framework | test accuracy | wall time | CPU time | ms/step (batch) | steps | load avg |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['arch']} | {r['framework']} | {100 * r['test_accuracy']:.1f}% | {r['wall_seconds']:.0f} s | "
            f"{r['cpu_seconds']:.0f} s | "
            f"{r['ms_per_step']:.1f} ({r['batch_size']}) | {r['steps']} | {r['load_average'][0]:.1f} |"
        )
    if args.write:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.update({f"{r['arch']}/{r['framework']}": r for r in rows})
        RESULTS.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
        print(f"\nrecorded in {RESULTS}")


def text_main(args) -> None:
    from dlzoo.scaffold.generate import RESULTS, TEMPLATES, results_key
    from dlzoo.zoo.frameworks import FRAMEWORKS

    frameworks = args.framework or [f for f in FRAMEWORKS if (TEMPLATES / "engines" / f"engine_{f}.py.j2").exists()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, task in (("gpt", "lm"), ("bert", "mlm"), ("bert", "classify")):
            if args.task and task not in args.task:
                continue
            for framework in frameworks:
                r = measure(arch, framework, args.set, Path(tmp), task)
                rows.append(r)
                metric = (
                    f"test {r['test_bpb']:.3f} bits/byte vs unigram {r['baseline']:.3f}"
                    if task == "lm"
                    else f"masked acc {100 * r['test_accuracy']:.1f}% vs most-frequent {100 * r['baseline']:.1f}%"
                    if task == "mlm"
                    else f"acc {100 * r['test_accuracy']:.1f}% (macro-F1 {r['test_macro_f1']:.3f}) vs majority "
                    f"{100 * r['baseline']:.1f}%, chance {100 * r['chance_accuracy']:.1f}%"
                )
                print(
                    f"{arch}-{task:8} {framework:8} {metric}  {r['wall_seconds']:.0f} s wall  {r['cpu_seconds']:.0f} s cpu  "
                    f"{r['ms_per_step']:.0f} ms/step  {r['steps']} steps  load {r['load_average'][0]:.1f}",
                    flush=True,
                )
                if args.write:  # after every run: a long sweep keeps what it measured
                    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
                    results[results_key(r["arch"], r["framework"], r["task"])] = r
                    RESULTS.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    if args.write:
        print(f"\nrecorded in {RESULTS}")


if __name__ == "__main__":
    main()
