"""Activation checkpointing (``remat=True``): what it saves in memory and costs in time, per framework.

For each framework, one training step (forward, backward, AdamW; dropout on) of the same model
with and without remat, each framework's ``benchmark_step`` (the low-overhead step ``dlzoo bench``
times; ``dlzoo bench ARCH --set remat=true`` runs one side by hand). Each framework runs in a
fresh process holding both settings, their trials interleaved (a shared machine's drift between
two processes was larger than the effect). Printed: the memory a step's backward pass needs from
its forward (``backward_memory``: torch's saved tensors, XLA's temporary buffers of the compiled
gradient), the median step time of each, and the ratios remat / no remat. docs/bench.md keeps
the table.

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
    """One framework, both settings in one process: the same weights, inputs and cotangents; the
    compile (first) call timed apart; then trials interleaved in alternating order, so the drift
    of a shared machine falls on both alike."""
    import statistics

    import numpy as np

    from dlzoo.zoo import get_config, load
    from dlzoo.zoo.bench import _seconds, bench_inputs
    from dlzoo.zoo.frameworks import backend

    base = get_config(args.arch, args.preset, **dict(_pair(p) for p in args.set))
    inputs = bench_inputs(args.arch, base, args.batch, args.seq_len, args.image_size)
    source = load(args.arch, args.framework, config=base)
    tensors = source.state_dict()
    rng = np.random.default_rng(1)
    cots = {k: rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.size) for k, v in source.apply(inputs).items()}
    steps, compile_s, memory, times = {}, {}, {}, {False: [], True: []}
    for remat in (False, True):
        config = base.replace(remat=remat)
        handle = load(args.arch, args.framework, config=config, weights=tensors)
        steps[remat] = backend(args.framework).benchmark_step(args.arch, config, handle.native, inputs, cots, mode="train")
        compile_s[remat] = _seconds(steps[remat])
        memory[remat] = backward_memory(args.framework, args.arch, config, args)
    for trial in range(args.trials):
        for remat in (False, True) if trial % 2 == 0 else (True, False):
            times[remat].append(_seconds(steps[remat]))
    print(
        json.dumps(
            {str(r).lower(): {"median_s": statistics.median(times[r]), "peak": memory[r], "compile_s": compile_s[r]} for r in (False, True)}
        )
    )


def backward_memory(framework: str, arch: str, config, args) -> int:
    """Bytes a training step's backward pass needs from its forward. torch: the tensors autograd
    saves (counted by a saved-tensors hook, train mode); JAX frameworks: the temporary buffers XLA
    assigns to the compiled gradient (``memory_analysis().temp_size_in_bytes``), which hold the
    saved activations. Each is that framework's own exact account, so compare ratios across
    frameworks, not bytes."""
    import numpy as np

    from dlzoo.zoo import load
    from dlzoo.zoo.bench import bench_inputs

    inputs = bench_inputs(arch, config, args.batch, args.seq_len, args.image_size)
    handle = load(arch, framework, config=config)
    cots = {k: np.ones(v.shape, np.float32) for k, v in handle.apply(inputs).items()}
    if framework == "torch":
        import torch

        from dlzoo.zoo.torch import _torch_inputs

        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        handle.native.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            handle.native(**_torch_inputs(arch, inputs, torch.device("cpu")))
        return total[0]
    import jax

    key = jax.random.key(0)
    if framework == "flax":
        from flax import nnx

        from dlzoo.zoo.flax import _grads

        graphdef, params, rest = nnx.split(handle.native, nnx.Param, ...)
        lowered = _grads.lower(graphdef, params, rest, inputs, cots, key, train=True)
    elif framework == "equinox":
        from dlzoo.zoo.equinox import _grads

        module, state = handle.native
        lowered = _grads.lower(arch, module, state, inputs, cots, key, False)
    elif framework == "haiku":
        from dlzoo.zoo.haiku import _compiled

        transformed, params, state = handle.native
        lowered = _compiled(transformed, "grad", True, ()).lower(params, state, key, inputs, cots)
    else:
        from dlzoo.zoo.keras import _jax_function, _values

        model = handle.native
        lowered = _jax_function(arch, model, "grad", True).lower(
            _values(model.trainable_variables), _values(model.non_trainable_variables), inputs, cots
        )
    compiled = lowered.compile()
    analysis = getattr(compiled, "memory_analysis", None) or compiled.compiled.memory_analysis
    return int(analysis().temp_size_in_bytes)


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
    args = parser.parse_args()
    if args.child:
        return child(args)

    from dlzoo.zoo import installed_frameworks

    frameworks = args.frameworks or installed_frameworks()
    passed = [a for a in sys.argv[1:] if a not in ("--json",)]
    rows = []
    for framework in frameworks:
        command = [sys.executable, __file__, *passed, "--child", "--framework", framework]
        env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"error: {framework} failed:\n{done.stderr[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        off, on = measured["false"], measured["true"]
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
    header = ("framework", "backward MiB, no remat", "backward MiB, remat", "memory remat/no", "step ms, no remat", "step ms, remat")
    print("| " + " | ".join((*header, "time remat/no")) + " |")
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
