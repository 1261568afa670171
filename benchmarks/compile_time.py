"""Compile time of a deep model's training step in the JAX frameworks, with and without ``scan_layers``.

For each JAX framework (flax, equinox, haiku) and deep preset (GPT-2 xl: 48 layers, width 1600;
ViT-H/14: 32 layers, width 1280), the training step (forward, backward, AdamW; dropout on,
train mode) is traced, lowered and compiled with ``jax.jit(step).lower(...).compile()`` on
abstract shapes: the model is built with ``nnx.eval_shape`` / ``eqx.filter_eval_shape`` /
``jax.eval_shape``, so no parameter is allocated (GPT-2 xl has 1.5B). Batch: 1 x 128 tokens,
or 1 image (fewer tokens only where the context is shorter). Each (framework, model, setting) runs in a fresh process (no compilation cache
shared, the same start for both). Printed: trace+lower seconds, compile seconds, their sum, and
the ratio loop / scan.

Then the runtime cost: the median training step of a small model (``--step-preset``, 4 layers)
with and without scan, each framework's ``benchmark_step`` (what ``dlzoo bench`` times), trials
interleaved in one process. docs/bench.md keeps the tables.

    nice python benchmarks/compile_time.py                       (both models, every JAX framework)
    nice python benchmarks/compile_time.py --models gpt:xl --frameworks flax --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

MODELS = ("gpt:xl", "vit:H/14")
FRAMEWORKS = ("flax", "equinox", "haiku")


class _NoUpdate:
    """Stands in for the optimizer when only forward + backward is measured: the gradients are
    the step's result, no parameter is updated."""

    def init(self, params):
        return ()

    def update(self, grads, state, params):
        return grads, state


def _abstract_step(framework: str, arch: str, config, optimizer: str = "adamw"):
    """(jitted training step, its abstract arguments) for ``framework``: the model built on
    shapes only; the step is forward + backward of a scalar of the outputs + one AdamW update
    (``optimizer="none"``: the gradients are returned instead, no update)."""
    import jax
    import jax.numpy as jnp
    import optax

    if optimizer == "none":
        optimizer, apply_updates = _NoUpdate(), lambda params, grads: grads
    elif optimizer == "adamw-flat":
        # one AdamW update over all parameters raveled into one vector: the update's program no
        # longer grows with the number of tensors (no per-tensor weight-decay mask possible)
        optimizer, apply_updates = optax.flatten(optax.adamw(1e-4)), optax.apply_updates
    else:
        optimizer, apply_updates = optax.adamw(1e-4), optax.apply_updates
    if arch == "gpt":
        inputs = {"input_ids": jax.ShapeDtypeStruct((1, min(128, config.context_length)), jnp.int32)}
    else:
        inputs = {"pixel_values": jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels), jnp.float32)}
    key = jax.eval_shape(lambda: jax.random.key(0))

    def objective(outputs):
        # a scalar that reads every output; its value does not matter for compile time
        return sum(jnp.mean(jnp.square(v.astype(jnp.float32))) for v in outputs.values())

    if framework == "flax":
        from flax import nnx

        from dlzoo.zoo.flax import MODELS as FLAX_MODELS
        from dlzoo.zoo.flax import _call

        abstract = nnx.eval_shape(lambda: FLAX_MODELS[arch](config, rngs=nnx.Rngs(params=0)))
        graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)

        def step(params, rest, opt_state, inputs, key):
            def loss(params):
                return objective(_call(nnx.merge(graphdef, params, rest, copy=True), inputs, True, key))

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return apply_updates(params, updates), opt_state, value

        return jax.jit(step), (params, rest, jax.eval_shape(optimizer.init, params), inputs, key)
    if framework == "equinox":
        import equinox as eqx

        from dlzoo.zoo.equinox import MODELS as EQX_MODELS
        from dlzoo.zoo.equinox import _forward

        module, state = eqx.filter_eval_shape(eqx.nn.make_with_state(EQX_MODELS[arch]), config, key=jax.random.key(0))
        params, static = eqx.partition(module, lambda x: isinstance(x, jax.ShapeDtypeStruct))

        def step(params, state, opt_state, inputs, key):
            def loss(params):
                return objective(_forward(arch, eqx.combine(params, static), state, inputs, key, False)[0])

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return apply_updates(params, updates), opt_state, value

        return jax.jit(step), (params, state, jax.eval_shape(optimizer.init, params), inputs, key)
    from dlzoo.zoo.haiku import MODELS as HAIKU_MODELS

    transformed = HAIKU_MODELS[arch](config)
    params, state = jax.eval_shape(lambda key, inputs: transformed.init(key, **inputs), key, inputs)

    def step(params, state, opt_state, inputs, key):
        def loss(params):
            return objective(transformed.apply(params, state, key, **inputs, is_training=True)[0])

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, value

    return jax.jit(step), (params, state, jax.eval_shape(optimizer.init, params), inputs, key)


def child_compile(args) -> None:
    from dlzoo.zoo import get_config

    arch, preset = args.model.split(":")
    config = get_config(arch, preset, scan_layers=args.scan, remat=args.remat)
    start = time.perf_counter()
    step, abstract = _abstract_step(args.framework, arch, config, args.optimizer)
    lowered = step.lower(*abstract)
    traced = time.perf_counter()
    lines = lowered.as_text().count("\n")  # the program's size, independent of the machine's load
    if args.hlo_only:
        print(json.dumps({"layers": config.num_layers, "trace_s": traced - start, "hlo_lines": lines}))
        return
    lowered.compile()
    done = time.perf_counter()
    print(json.dumps({"layers": config.num_layers, "trace_s": traced - start, "compile_s": done - traced, "hlo_lines": lines}))


def child_steps(args) -> None:
    """The median training step of a small model with and without scan: the same weights,
    inputs and cotangents, trials interleaved in alternating order."""
    import statistics

    import numpy as np

    from dlzoo.zoo import get_config, load
    from dlzoo.zoo.bench import _seconds, bench_inputs
    from dlzoo.zoo.frameworks import backend

    arch, preset = args.model.split(":")
    base = get_config(arch, preset, num_layers=4, **({"dropout": 0.1} if arch == "vit" else {}))
    inputs = bench_inputs(arch, base, args.batch, None, None)
    source = load(arch, args.framework, config=base)
    tensors = source.state_dict()
    rng = np.random.default_rng(1)
    cots = {k: rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.size) for k, v in source.apply(inputs).items()}
    steps, first, times = {}, {}, {False: [], True: []}
    for scan in (False, True):
        config = base.replace(scan_layers=scan)
        handle = load(arch, args.framework, config=config, weights=tensors)
        steps[scan] = backend(args.framework).benchmark_step(arch, config, handle.native, inputs, cots, mode="train")
        first[scan] = _seconds(steps[scan])
    for trial in range(args.trials):
        for scan in (False, True) if trial % 2 == 0 else (True, False):
            times[scan].append(_seconds(steps[scan]))
    print(json.dumps({str(s).lower(): {"median_s": statistics.median(times[s]), "first_s": first[s]} for s in (False, True)}))


def _run(argv: list[str], timeout: float) -> dict | None:
    command = [sys.executable, __file__, *argv]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="arch:preset, e.g. gpt:xl vit:H/14")
    parser.add_argument("--frameworks", nargs="*", default=list(FRAMEWORKS))
    parser.add_argument("--remat", action="store_true", help="compile with remat=True as well (both settings)")
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "adamw-flat", "none"),
        default="adamw",
        help="adamw-flat: optax.flatten(optax.adamw); none: forward + backward only",
    )
    parser.add_argument(
        "--hlo-only", action="store_true", help="lower only: the size of each program (HLO lines), no compilation, no steps"
    )
    parser.add_argument(
        "--settings", nargs="+", choices=("loop", "scan"), default=["loop", "scan"], help="which settings to compile (default both)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a compilation is given up (reported as such)")
    parser.add_argument("--step-models", nargs="*", default=["gpt:124M", "vit:S/16"], help="small models (4 layers) for the step time")
    parser.add_argument("--batch", type=int, default=8, help="batch of the step-time models")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("compile", "steps"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "compile":
        return child_compile(args)
    if args.child == "steps":
        return child_steps(args)

    import jax

    rows, steps = [], []
    for model in args.models:
        for framework in args.frameworks:
            measured = {False: None, True: None}
            for scan in [setting == "scan" for setting in args.settings]:
                argv = ["--child", "compile", "--model", model, "--framework", framework, "--optimizer", args.optimizer]
                argv += ["--scan"] * scan + ["--remat"] * args.remat + ["--hlo-only"] * args.hlo_only
                measured[scan] = _run(argv, args.timeout)
            total = {s: None if m is None else m["trace_s"] + m.get("compile_s", 0.0) for s, m in measured.items()}
            rows.append(
                {
                    "framework": framework,
                    "model": model,
                    "layers": next((m["layers"] for m in measured.values() if m), None),
                    "loop": measured[False],
                    "scan": measured[True],
                    "ratio": total[False] / total[True] if total[False] and total[True] else None,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for model in [] if args.hlo_only else args.step_models:
        for framework in args.frameworks:
            argv = ["--child", "steps", "--model", model, "--framework", framework]
            argv += ["--batch", str(args.batch), "--trials", str(args.trials)]
            measured = _run(argv, args.timeout)
            steps.append({"framework": framework, "model": model, **measured})
            print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
    document = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}",
        "load_average": os.getloadavg(),
        "remat": args.remat,
        "optimizer": args.optimizer,
        "compile": rows,
        "steps": steps,
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return
    load = document["load_average"]
    print(f"{document['machine']}; load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; optimizer {args.optimizer}")
    if args.hlo_only:
        print("| framework | model | layers | HLO lines, loop | HLO lines, scan | loop / scan |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            loop, scan = ((r[side] or {}).get("hlo_lines") for side in ("loop", "scan"))
            ratio = f"{loop / scan:.1f}" if loop and scan else "-"
            print(f"| {r['framework']} | {r['model']} | {r['layers']} | {loop or '-'} | {scan or '-'} | {ratio} |")
        return
    print("| framework | model | layers | loop: trace s | loop: compile s | scan: trace s | scan: compile s | total loop / scan |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for side in ("loop", "scan"):
            m = r[side]
            if side not in args.settings:
                cells += ["-", "-"]
                continue
            cells += ["timeout", "timeout"] if m is None else [f"{m['trace_s']:.1f}", f"{m['compile_s']:.1f}"]
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "n/a"
        print(f"| {r['framework']} | {r['model']} | {r['layers']} | {' | '.join(cells)} | {ratio} |")
    print()
    print("| framework | model (4 layers) | step ms, loop | step ms, scan | scan / loop |")
    print("|---|---|---|---|---|")
    for s in steps:
        loop, scan = s["false"]["median_s"], s["true"]["median_s"]
        print(f"| {s['framework']} | {s['model']} | {loop * 1e3:.1f} | {scan * 1e3:.1f} | {scan / loop:.2f} |")


if __name__ == "__main__":
    main()
