"""Forward-pass speed of every installed framework, side by side with `transformers`.

    python benchmarks/forward_speed.py [--arch gpt] [--preset tiny] [--batch 8] [--repeats 20]

Each framework runs the same canonical weights on the same inputs through the handle (numpy in,
numpy out, compiled functions warmed up first); the table reports the median time per call and
its ratio to transformers' eager PyTorch on the same inputs. Read the ratios, not the seconds:
timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

from dlzoo.zoo import get_config, installed_frameworks, load
from dlzoo.zoo.reference import sample_inputs, transformers_model, transformers_outputs


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="gpt")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    config = get_config(args.arch, args.preset)
    frameworks = installed_frameworks()
    tensors = load(args.arch, frameworks[0], config=config).state_dict()
    inputs = sample_inputs(args.arch, config, batch=args.batch)
    rows = []
    if "torch" in frameworks:
        model = transformers_model(args.arch, config, tensors)
        rows.append(("transformers", _median_seconds(lambda: transformers_outputs(args.arch, model, inputs), args.repeats)))
    for framework in frameworks:
        handle = load(args.arch, framework, config=config, weights=tensors)
        rows.append((framework, _median_seconds(lambda: handle.apply(inputs), args.repeats)))
    base = rows[0][1]
    print(f"{args.arch} {args.preset}, batch {args.batch}, median of {args.repeats}")
    print(f"{'implementation':16} {'ms/call':>9} {'ratio':>7}")
    for name, seconds in rows:
        print(f"{name:16} {seconds * 1e3:9.2f} {seconds / base:7.2f}")


if __name__ == "__main__":
    main()
