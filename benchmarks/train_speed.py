"""Training-step speed across frameworks: the scripts behind docs/bench.md's tables (issue 20).

Every comparison runs its alternatives in ONE process, trials interleaved (each round runs every
alternative once, in a rotated order), and reports ratios of medians: absolute times drift on a
shared machine, and whichever alternative runs first in a fresh process looks slower. Each
section prints a markdown table, the load average before and after, the versions, and (with
``--json PATH``) the raw numbers.

    nice python benchmarks/train_speed.py side [--archs gpt bert vit resnet] [--trials 11]
        step time side by side at mid size (``dlzoo bench --json`` per architecture)
    nice python benchmarks/train_speed.py fixes [--only equinox-lr keras-adamw torch-adamw dropout cli]
        each perf fix, its "before" reconstructed here and timed against today's code
    nice python benchmarks/train_speed.py overhead [--batch 1 --seq-len 8] [--trials 31]
        per-step overhead of each framework's training path on the tiny GPT preset
    side, fixes and overhead take --threads 1: every framework single-threaded (torch and
        XLA:CPU), the setting docs/bench.md uses on its oversubscribed 2-core machine, where
        two torch threads stall each other
    nice python benchmarks/train_speed.py refs [--archs ...] [--trials 15]
        dlzoo's torch models against transformers, torchvision and timm, with an A/A control
    nice python benchmarks/train_speed.py xla [--only profile matmul threads donation conv]
        XLA:CPU vs torch: time per kind of thunk from a jax.profiler trace with optimized-HLO
        op counts, isolated matmuls, thread and runtime flags, buffer donation, convolutions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Mid-size models of issue 20: 4 layers, width 384 (6 heads, MLP 1536), batch 8 x 128 tokens or
# 16 images of 96x96; ResNet: the smallest published preset (18) at 96x96.
MID = {
    "gpt": ("124M", dict(num_layers=4, hidden_size=384, num_heads=6, mlp_dim=1536, vocab_size=4096), 8, ("--seq-len", 128)),
    "bert": ("base", dict(num_layers=4, hidden_size=384, num_heads=6, mlp_dim=1536, vocab_size=4096), 8, ("--seq-len", 128)),
    "vit": ("S/16", dict(num_layers=4, num_classes=10), 16, ("--image-size", 96)),
    "resnet": ("18", dict(num_classes=10), 16, ("--image-size", 96)),
}
JAX_PATHS = ("flax", "equinox", "haiku", "keras", "keras-fit")


# --------------------------------------------------------------------------- shared helpers


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "cpus": str(os.cpu_count()), "machine": platform.processor() or platform.machine()}
    for name in ("torch", "jax", "jaxlib", "flax", "equinox", "dm-haiku", "keras", "optax", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(steps: dict[str, Callable[[], object]], trials: int, warmup: int = 1) -> dict[str, dict]:
    """Median and quartiles (seconds) of each step, trials interleaved in a rotated order; the
    first ``warmup`` calls of each (compilation) are timed apart as ``first_s``."""
    first = {}
    for name, step in steps.items():
        first[name] = seconds(step)
        for _ in range(warmup - 1):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for trial in range(trials):
        k = trial % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(seconds(steps[name]))
    out = {}
    for name in names:
        q1, median, q3 = statistics.quantiles(times[name], n=4) if trials >= 2 else (times[name][0],) * 3
        out[name] = {"median_s": statistics.median(times[name]), "q1_s": q1, "q3_s": q3, "first_s": first[name]}
    return out


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for _, key in columns) + " |")
    return "\n".join(lines)


def header(section: str, command: str, load_before: str, load_after: str) -> str:
    v = versions()
    return (
        f"## {section}\n\n    {command}\n\n"
        f"Machine: {cpu_model()}, {v['cpus']} cores (shared), no GPU. Load average before / after: "
        f"{load_before} / {load_after}.\n" + ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("cpus", "machine")) + "\n"
    )


def ms(seconds_: float) -> str:
    return f"{seconds_ * 1e3:.1f}" if seconds_ >= 0.01 else f"{seconds_ * 1e3:.2f}"


def save(path: str | None, document: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(document, f, indent=2)


# --------------------------------------------------------------------------- 1. side by side


SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def side(args) -> None:
    """``dlzoo bench --json`` per architecture at mid size, each in its own process. With
    ``--threads 1`` every framework runs single-threaded (torch, and XLA:CPU by its flags): on a
    shared, oversubscribed machine torch's two OpenMP threads wait on each other at every op
    (docs/bench.md), which a single thread per framework avoids."""
    documents, out = {}, []
    for arch in args.archs:
        preset, sets, batch, size = MID[arch]
        command = [sys.executable, "-m", "dlzoo.cli", "bench", arch, "--preset", preset, "--batch", str(batch), *map(str, size)]
        for key, value in sets.items():
            command += ["--set", f"{key}={value}"]
        command += ["--trials", str(args.trials), "--json"]
        before = loadavg()
        done = subprocess.run(command, capture_output=True, text=True)
        after = loadavg()
        if done.returncode != 0:
            sys.exit(f"error: dlzoo bench {arch} failed:\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout[done.stdout.index("{") :])
        report["load_before"], report["load_after"] = before, after
        report["command"] = "dlzoo " + " ".join(command[3:])
        documents[arch] = report
        out.append(side_table(arch, report))
        print(out[-1], flush=True)
    save(args.json, {"versions": versions(), "cpu": cpu_model(), "reports": documents})


def side_table(arch: str, report: dict) -> str:
    rows = {r["implementation"]: r for r in report["results"]}
    fastest = min(r["median_s"] for r in rows.values())
    lines = []
    for name, r in rows.items():
        lines.append(
            {
                "impl": name,
                "x torch": f"{r['ratio_to_torch']:.2f}",
                "x fastest": f"{r['median_s'] / fastest:.2f}",
                "median": ms(r["median_s"]),
                "iqr": f"{ms(r['iqr_s'][0])}-{ms(r['iqr_s'][1])}",
                "compile": f"{r['compile_s']:.1f}",
                "gflops": f"{r['gflops']:.0f}",
                "ceil": f"{100 * r['fraction_of_ceiling']:.0f}%",
            }
        )
    text = (
        f"### {arch}: `{report['command']}`\n\nload average {report['load_before']} -> {report['load_after']}; "
        f"matmul ceiling {report['ceiling_gflops']:.0f} GFLOP/s ({report['ceiling_library']}); "
        f"{report['flops_per_step'] / 1e9:.2f} GFLOP per step\n\n"
    )
    text += table(
        lines,
        [
            ("implementation", "impl"),
            ("x torch", "x torch"),
            ("x fastest", "x fastest"),
            ("median ms", "median"),
            ("IQR ms", "iqr"),
            ("first call s", "compile"),
            ("GFLOP/s", "gflops"),
            ("% ceiling", "ceil"),
        ],
    )
    verdicts = []
    if "transformers" in rows and "torch" in rows:
        ratio = rows["torch"]["median_s"] / rows["transformers"]["median_s"]
        verdicts.append(f"torch / transformers = {ratio:.2f} ({'met' if ratio <= 1.0 else 'NOT met'}: <= 1.0)")
    for name in JAX_PATHS:
        if name in rows:
            ratio = rows[name]["median_s"] / fastest
            verdicts.append(f"{name} {ratio:.2f}x fastest ({'met' if ratio <= 1.1 else 'NOT met'})")
    best = max(r["fraction_of_ceiling"] for r in rows.values())
    verdicts.append(f"best {100 * best:.0f}% of the ceiling ({'met' if best >= 0.6 else 'NOT met'}: >= 60%)")
    return text + "\n\nTargets: " + "; ".join(verdicts) + "\n"


# --------------------------------------------------------------------------- shared model setup


def setup(arch: str, preset: str, sets: dict, batch: int, seq_len=None, image_size=None, framework="torch"):
    """(config, canonical weights, inputs, cotangents) exactly as ``dlzoo bench`` builds them."""
    import numpy as np

    from dlzoo.zoo import get_config, load
    from dlzoo.zoo.bench import bench_inputs

    if arch == "vit" and image_size:
        sets = {**sets, "image_size": image_size}
    config = get_config(arch, preset, **sets)
    inputs = bench_inputs(arch, config, batch, seq_len, image_size)
    source = load(arch, framework, config=config, seed=0)
    tensors = source.state_dict()
    rng = np.random.default_rng(1)
    cots = {k: (rng.standard_normal(v.shape) / np.sqrt(v.size)).astype(np.float32) for k, v in source.apply(inputs).items()}
    return config, tensors, inputs, cots


def native(arch, framework, config, tensors):
    from dlzoo.zoo import load

    return load(arch, framework, config=config, weights=tensors).native


def bench_step(arch, framework, config, tensors, inputs, cots, **kwargs):
    from dlzoo.zoo.frameworks import backend

    name = "keras" if framework == "keras-fit" else framework
    if framework == "keras-fit":
        kwargs["fit"] = True
    return backend(name).benchmark_step(arch, config, native(arch, name, config, tensors), inputs, cots, mode="train", **kwargs)


def ratio_rows(result: dict, baseline: str) -> list[dict]:
    base = result[baseline]["median_s"]
    return [
        {
            "path": name,
            "median": ms(r["median_s"]),
            "iqr": f"{ms(r['q1_s'])}-{ms(r['q3_s'])}",
            "first": f"{r['first_s']:.2f}",
            "ratio": f"{r['median_s'] / base:.2f}",
        }
        for name, r in result.items()
    ]


PATH_COLUMNS = [("path", "path"), ("median ms", "median"), ("IQR ms", "iqr"), ("first call s", "first"), ("ratio", "ratio")]


# --------------------------------------------------------------------------- 2. the fixes


TINY_GPT = ("gpt", "tiny", {}, 8, 64, None)


def fix_equinox_lr(trials: int) -> dict:
    """equinox adamw_step: hyperparameters as Python floats through eqx.filter_jit (static, so a
    new learning rate recompiles) vs as arrays (today). The learning rate changes every call."""
    import jax

    from dlzoo.zoo.equinox import _adamw
    from dlzoo.zoo.frameworks import backend

    arch, preset, sets, batch, seq, size = TINY_GPT
    config, tensors, inputs, cots = setup(arch, preset, sets, batch, seq, size)
    before_native, after_native = native(arch, "equinox", config, tensors), native(arch, "equinox", config, tensors)
    count = [0]

    def lr():
        count[0] += 1
        return 1e-4 * (1 + 1e-3 * count[0])

    def before():
        module, state = before_native
        jax.block_until_ready(_adamw(arch, module, state, inputs, cots, jax.random.key(0), lr(), 0.9, 0.999, 1e-8, 0.01))

    def after():
        module, _ = backend("equinox").adamw_step(
            arch, config, after_native, inputs, cots, lr=lr(), betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
        )
        jax.block_until_ready(module)

    result = interleave({"filter_jit, lr as a Python float (before)": before, "lr as an array (today)": after}, trials)
    return {
        "title": "equinox adamw_step, a new learning rate every call (GPT tiny, batch 8 x 64)",
        "result": result,
        "baseline": "lr as an array (today)",
    }


def fix_keras_adamw(trials: int) -> dict:
    """keras adamw_step on jax: the optimizer applied eagerly op by op after a jitted gradient
    (before) vs one jitted stateless step with the learning rate as data (today)."""
    import keras

    from dlzoo.zoo.frameworks import backend
    from dlzoo.zoo.keras import _gradients

    arch, preset, sets, batch, seq, size = TINY_GPT
    config, tensors, inputs, cots = setup(arch, preset, sets, batch, seq, size)
    before_model, after_model = native(arch, "keras", config, tensors), native(arch, "keras", config, tensors)

    def before():
        grads = _gradients(arch, before_model, inputs, cots, train=False)
        optimizer = keras.optimizers.AdamW(
            learning_rate=1e-4, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8 * (1 - 0.999) ** 0.5
        )
        optimizer.apply_gradients(zip(grads, before_model.trainable_variables))
        keras.ops.convert_to_numpy(before_model.trainable_variables[0].value)

    def after():
        backend("keras").adamw_step(arch, config, after_model, inputs, cots, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        keras.ops.convert_to_numpy(after_model.trainable_variables[0].value)

    result = interleave({"optimizer eagerly (before)": before, "jitted stateless step (today)": after}, trials)
    return {"title": "keras adamw_step on jax (GPT tiny, batch 8 x 64)", "result": result, "baseline": "jitted stateless step (today)"}


def fix_torch_adamw(trials: int) -> dict:
    """A BERT-tiny training step with torch.optim.AdamW's three implementations: the per-tensor
    Python loop (foreach=False), foreach (multi-tensor ops) and fused (one kernel; today)."""
    import torch

    from dlzoo.zoo.torch import _torch_inputs

    arch, preset, sets, batch, seq, size = "bert", "tiny", {}, 8, 128, None
    config, tensors, inputs, cots = setup(arch, preset, sets, batch, seq, size)
    steps = {}
    for label, kwargs in (
        ("for-loop (foreach=False)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused (today)", {"fused": True}),
    ):
        model = native(arch, "torch", config, tensors)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
        tin = _torch_inputs(arch, inputs, torch.device("cpu"))
        tc = {k: torch.from_numpy(v) for k, v in cots.items()}

        def step(model=model, optimizer=optimizer, tin=tin, tc=tc):
            optimizer.zero_grad(set_to_none=True)
            out = model(**tin)
            sum((out[k] * c).sum() for k, c in tc.items()).backward()
            optimizer.step()

        steps[label] = step
    result = interleave(steps, trials)
    return {
        "title": f"torch training step, BERT tiny, batch {batch} x {seq}, by AdamW implementation",
        "result": result,
        "baseline": "fused (today)",
    }


@contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def fix_dropout(trials: int) -> dict:
    """GPT mid training step with the residual dropout as a select, where(mask, x / keep, 0)
    (before) vs a multiply by the scaled mask (today's flax, equinox and keras; haiku's form).
    The "before" is the frameworks' own Dropout, swapped in while the step compiles."""
    import equinox as eqx
    import keras
    from flax import nnx

    from dlzoo.zoo.equinox import layers as eqx_layers
    from dlzoo.zoo.flax import layers as flax_layers
    from dlzoo.zoo.keras import layers as keras_layers

    preset, sets, batch, (_, seq) = MID["gpt"]
    config, tensors, inputs, cots = setup("gpt", preset, sets, batch, seq)
    steps = {"haiku (multiply)": bench_step("gpt", "haiku", config, tensors, inputs, cots)}
    with patched(flax_layers.Dropout, "__call__", nnx.Dropout.__call__):
        step = bench_step("gpt", "flax", config, tensors, inputs, cots)
        step()  # traced and compiled with the select
        steps["flax, select (before)"] = step
    steps["flax, multiply (today)"] = bench_step("gpt", "flax", config, tensors, inputs, cots)
    with patched(eqx_layers.Dropout, "__call__", eqx.nn.Dropout.__call__):
        step = bench_step("gpt", "equinox", config, tensors, inputs, cots)
        step()
        steps["equinox, select (before)"] = step
    steps["equinox, multiply (today)"] = bench_step("gpt", "equinox", config, tensors, inputs, cots)
    with patched(keras_layers.Dropout, "call", keras.layers.Dropout.call):
        step = bench_step("gpt", "keras", config, tensors, inputs, cots)
        step()
        steps["keras, select (before)"] = step
    steps["keras, multiply (today)"] = bench_step("gpt", "keras", config, tensors, inputs, cots)
    result = interleave(steps, trials)
    return {
        "title": "GPT mid training step (4 x 384, batch 8 x 128), residual dropout select vs multiply",
        "result": result,
        "baseline": "haiku (multiply)",
    }


def fix_resnet_inplace(trials: int) -> dict:
    """ResNet-50 training step (batch 8 at 224x224) in torch: ReLU and the residual add out of
    place (before) vs in place as torchvision writes them (today); torchvision's own model on the
    same weights beside them. The "before" forwards are rebuilt here and swapped in."""
    import torch.nn.functional as F

    from dlzoo.zoo.bench import _reference_step
    from dlzoo.zoo.torch import resnet

    def stem(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), kernel_size=3, stride=2, padding=1)

    def bottleneck(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + shortcut)

    config, tensors, inputs, cots = setup("resnet", "50", {}, 8, None, 224)
    steps = {"torchvision": _reference_step("torchvision", "resnet", config, tensors, inputs, cots, "train")}
    before = bench_step("resnet", "torch", config, tensors, inputs, cots)

    def out_of_place():  # eager: the forwards are looked up at every call
        with patched(resnet.Stem, "forward", stem), patched(resnet.Bottleneck, "forward", bottleneck):
            return before()

    steps["torch, out of place (before)"] = out_of_place
    steps["torch, in place (today)"] = bench_step("resnet", "torch", config, tensors, inputs, cots)
    result = interleave(steps, trials)
    return {
        "title": "torch ResNet-50 training step, batch 8 at 224x224, ReLU and residual add out of place vs in place",
        "result": result,
        "baseline": "torchvision",
    }


def fix_cli(trials: int) -> dict:
    """benchmarks/cli_startup.py: fresh processes, interleaved; its rows ``import typer`` (the
    CLI library before) and ``import click`` (today's) show what the library alone costs."""
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, os.path.join(here, "cli_startup.py"), "--runs", str(trials)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: cli_startup.py failed:\n{done.stderr[-2000:]}")
    return {"title": "CLI start-up (benchmarks/cli_startup.py)", "text": done.stdout}


FIXES = {
    "equinox-lr": fix_equinox_lr,
    "keras-adamw": fix_keras_adamw,
    "torch-adamw": fix_torch_adamw,
    "dropout": fix_dropout,
    "resnet-inplace": fix_resnet_inplace,
    "cli": fix_cli,
}
FIX_TRIALS = {"equinox-lr": 5, "keras-adamw": 15, "torch-adamw": 15, "dropout": 9, "resnet-inplace": 9, "cli": 10}


def fixes(args) -> None:
    document = {}
    for name in args.only:
        before = loadavg()
        outcome = FIXES[name](args.trials or FIX_TRIALS[name])
        after = loadavg()
        print(f"### {outcome['title']}\n\nload average {before} -> {after}\n")
        if "text" in outcome:
            print("```\n" + outcome["text"].rstrip() + "\n```\n", flush=True)
        else:
            print(table(ratio_rows(outcome["result"], outcome["baseline"]), PATH_COLUMNS) + "\n", flush=True)
        document[name] = {**outcome, "load_before": before, "load_after": after}
    save(args.json, {"versions": versions(), "cpu": cpu_model(), "fixes": document})


# --------------------------------------------------------------------------- 4. per-step overhead


def overhead(args) -> None:
    """Every framework's training path on the GPT tiny preset (default batch 8 x 64; batch 1 x 8
    makes the compute negligible), where the per-step cost of the path shows: today's low-overhead paths (benchmark_step)
    and the common alternatives (nnx.jit with nnx.Optimizer, nnx.cached_partial, a jax.jit
    re-split per call, eqx.filter_jit, keras fit's train_on_batch)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from dlzoo.zoo.equinox import _forward
    from dlzoo.zoo.flax import _call

    arch, preset, sets, _, _, size = TINY_GPT
    batch, seq = args.batch, args.seq_len
    config, tensors, inputs, cots = setup(arch, preset, sets, batch, seq, size)
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}
    jc = {k: jnp.asarray(v) for k, v in cots.items()}
    steps = {name: bench_step(arch, name, config, tensors, inputs, cots) for name in ("torch", "flax", "equinox", "haiku", "keras")}
    steps["keras-fit"] = bench_step(arch, "keras-fit", config, tensors, inputs, cots)

    # flax: the stateful NNX API, nnx.jit over the module and an nnx.Optimizer
    model = native(arch, "flax", config, tensors)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)

    def nnx_train(model, optimizer, key):
        def loss(model):
            out = _call(model, jin, True, key)
            return sum(jnp.sum(out[k] * jc[k]) for k in jc)

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    jitted = nnx.jit(nnx_train)
    counter = [0]

    def key():
        counter[0] += 1
        return jax.random.fold_in(jax.random.key(0), counter[0])

    steps["flax nnx.jit + nnx.Optimizer"] = lambda: jax.block_until_ready(jitted(model, optimizer, key()))
    model2 = native(arch, "flax", config, tensors)
    optimizer2 = nnx.Optimizer(model2, optax.adamw(1e-4), wrt=nnx.Param)
    cached = nnx.cached_partial(nnx.jit(nnx_train), model2, optimizer2)
    steps["flax nnx.cached_partial(nnx.jit)"] = lambda: jax.block_until_ready(cached(key()))

    # flax: plain jax.jit, but the module split and updated on every call
    model3 = native(arch, "flax", config, tensors)
    tx = optax.adamw(1e-4)
    opt_state = [tx.init(nnx.state(model3, nnx.Param))]

    @partial(jax.jit, static_argnums=0)
    def split_train(graphdef, params, rest, opt_state, key):
        def loss(params):
            m = nnx.merge(graphdef, params, rest, copy=True)
            out = _call(m, jin, True, key)
            return sum(jnp.sum(out[k] * jc[k]) for k in jc)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def resplit():
        graphdef, params, rest = nnx.split(model3, nnx.Param, ...)
        params, opt_state[0], value = split_train(graphdef, params, rest, opt_state[0], key())
        nnx.update(model3, params)
        return jax.block_until_ready(value)

    steps["flax jax.jit, nnx.split per call"] = resplit

    # equinox: eqx.filter_jit over the whole module every call
    module, state = native(arch, "equinox", config, tensors)
    etx = optax.adamw(1e-4)
    carry = [module, state, etx.init(eqx.filter(module, eqx.is_inexact_array))]

    @eqx.filter_jit
    def eqx_train(module, state, opt_state, key):
        def loss(module):
            out, new_state = _forward(arch, module, state, jin, key, False)
            return sum(jnp.sum(out[k] * jc[k]) for k in jc), new_state

        (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(module)
        updates, opt_state = etx.update(grads, opt_state, eqx.filter(module, eqx.is_inexact_array))
        return eqx.apply_updates(module, updates), state, opt_state, value

    def eqx_step():
        *carry[:], value = eqx_train(*carry, key())
        return jax.block_until_ready(value)

    steps["equinox eqx.filter_jit"] = eqx_step
    before = loadavg()
    result = interleave(steps, args.trials)
    after = loadavg()
    print(f"### GPT tiny training step (batch {batch} x {seq}), every path\n\nload average {before} -> {after}\n")
    print(table(ratio_rows(result, "torch"), PATH_COLUMNS) + "\n", flush=True)

    # the handles' own apply (what `dlzoo verify`/`predict` call): flax splits the module per call
    from dlzoo.zoo.frameworks import backend

    applies = {}
    for framework in ("torch", "flax", "equinox", "haiku", "keras"):
        handle_native = native(arch, framework, config, tensors)
        applies[framework] = partial(backend(framework).apply, arch, config, handle_native, inputs)
    flax_model = native(arch, "flax", config, tensors)
    applies["flax nnx.split alone"] = lambda: nnx.split(flax_model)
    before2 = loadavg()
    apply_result = interleave(applies, args.trials, warmup=2)
    after2 = loadavg()
    print(f"### GPT tiny forward through the backends' apply (batch {batch} x {seq})\n\nload average {before2} -> {after2}\n")
    print(table(ratio_rows(apply_result, "torch"), PATH_COLUMNS))
    save(args.json, {"versions": versions(), "cpu": cpu_model(), "load": [before, after], "result": result, "apply": apply_result})


# --------------------------------------------------------------------------- 3. XLA:CPU vs torch


def gpt_mid():
    preset, sets, batch, (_, seq) = MID["gpt"]
    return ("gpt", *setup("gpt", preset, sets, batch, seq))


@contextmanager
def recording_jit(record: list):
    """Every jax.jit created inside records the argument shapes of its last call, so the exact
    compiled step of a benchmark_step can be lowered again (its buffers are donated)."""
    import jax

    real = jax.jit

    def jit(fun=None, **kwargs):
        if fun is None:
            return lambda f: jit(f, **kwargs)
        jitted = real(fun, **kwargs)

        def call(*args):
            spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "dtype") else x, args)
            record.append((jitted, spec))
            return jitted(*args)

        return call

    with patched(jax, "jit", jit):
        yield


def compiled_step(arch, framework, config, tensors, inputs, cots):
    """(step, the compiled XLA executable of its training step)."""
    import jax

    record: list = []
    with recording_jit(record):
        step = bench_step(arch, framework, config, tensors, inputs, cots)
        step()
    # the training step is the recorded jit with the most array arguments (jax's own helpers
    # jitted meanwhile, such as fold_in, take one or two)
    jitted, spec = max(record, key=lambda entry: len(jax.tree.leaves(entry[1])))
    return step, jitted.lower(*spec).compile()


def op_profile(step, compiled, repeats: int = 5) -> dict:
    """Time per kind of XLA:CPU thunk over ``repeats`` steps, from a jax.profiler trace: XLA:CPU
    records one event per thunk, named after its HLO instruction."""
    import glob
    import gzip
    import re
    import shutil
    import tempfile

    import jax

    directory = tempfile.mkdtemp(prefix="train_speed_profile_")
    jax.profiler.start_trace(directory)
    for _ in range(repeats):
        step()
    jax.profiler.stop_trace()
    trace = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    shutil.rmtree(directory, ignore_errors=True)
    hlo = compiled.as_text()
    kinds = {}
    for line in hlo.splitlines():  # instruction name -> what it computes
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w-]*)\(", line)
        if match:
            kinds[match.group(1)] = match.group(2)
    totals: dict[str, float] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name not in kinds:
            continue
        kind = kinds[name]
        if kind == "fusion" or kind == "custom-call":
            kind = name.rstrip("0123456789.").rstrip("._")  # ynn_fusion, loop_fusion, ...
        totals[kind] = totals.get(kind, 0.0) + event["dur"] / 1e6 / repeats
    return totals


def hlo_counts(compiled) -> dict:
    import re

    text = compiled.as_text()
    counts = {}
    for op in ("dot", "convolution", "transpose", "copy", "fusion", "custom-call", "select"):
        counts[op] = len(re.findall(rf"= \S+ {op}\(", text))
    counts["ynn/xnn/onednn fusions"] = len(re.findall(r"kind=kCustom|__onednn|xnn|ynn", text))
    return counts


def xla_profile(args) -> dict:
    """Where a compiled step's time goes, per kind of thunk, for the GPT mid step (flax) and the
    ResNet-18 step (flax), beside the step time the profile covered."""
    out = {}
    for label, build in (("gpt", gpt_mid), ("resnet", resnet_mid)):
        arch, config, tensors, inputs, cots = build()
        step, compiled = compiled_step(arch, "flax", config, tensors, inputs, cots)
        wall = min(seconds(step) for _ in range(3))
        totals = op_profile(step, compiled)
        out[label] = {"step_s": wall, "thunk_s": totals, "hlo": hlo_counts(compiled)}
    return out


def resnet_mid():
    preset, sets, batch, (_, size) = MID["resnet"]
    return ("resnet", *setup("resnet", preset, sets, batch, image_size=size))


def dot_shapes(config, batch: int, seq: int) -> list[tuple[str, tuple, tuple, int]]:
    """The matmuls of one GPT training step: (label, a shape, b shape, count per step); for each
    dense layer its forward, input-gradient and weight-gradient products; attention's batched
    matmuls likewise (forward and two backward products each)."""
    m, d, h = batch * seq, config.hidden_size, config.num_heads
    hd, layers = d // h, config.num_layers
    shapes = []
    for name, k, n, count in (
        ("qkv", d, 3 * d, layers),
        ("attn out", d, d, layers),
        ("mlp in", d, config.mlp_dim, layers),
        ("mlp out", config.mlp_dim, d, layers),
        ("lm head", d, config.vocab_size, 1),
    ):
        shapes += [(f"{name} fwd", (m, k), (k, n), count), (f"{name} dx", (m, n), (n, k), count), (f"{name} dW", (k, m), (m, n), count)]
    bh = batch * h
    shapes += [
        ("attn q.kT fwd", (bh, seq, hd), (bh, hd, seq), 3 * layers),  # and its two gradients, same sizes
        ("attn p.v fwd", (bh, seq, seq), (bh, seq, hd), 3 * layers),
    ]
    return shapes


def xla_matmul(args) -> dict:
    """The GPT mid step's matmul shapes in isolation, jax (jit, XLA:CPU) vs torch, interleaved."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    arch, config, tensors, inputs, cots = gpt_mid()
    batch, seq = inputs["input_ids"].shape
    rows, total = [], {"jax": 0.0, "torch": 0.0}
    matmul = jax.jit(jnp.matmul)
    for label, a_shape, b_shape, count in dot_shapes(config, batch, seq):
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal(a_shape, np.float32), rng.standard_normal(b_shape, np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        result = interleave(
            {"jax": lambda: matmul(ja, jb).block_until_ready(), "torch": lambda: torch.matmul(ta, tb)},
            args.trials,
            warmup=2,
        )
        flops = 2 * np.prod(a_shape) * b_shape[-1]
        row = {"shape": f"{label} {a_shape}x{b_shape[-2:]}", "count": count}
        for lib in ("jax", "torch"):
            row[lib] = result[lib]["median_s"]
            row[f"{lib} GFLOP/s"] = flops / result[lib]["median_s"] / 1e9
            total[lib] += count * result[lib]["median_s"]
        rows.append(row)
    return {"rows": rows, "total_s": total}


THREAD_VARIANTS = {
    "default": {},
    "eigen single-threaded": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
    "no YNNPACK fusions": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
    "thunk runtime off": {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"},
    "torch 1 thread, XLA 1 thread": {
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "OMP_NUM_THREADS": "1",
    },
}


def xla_threads(args) -> dict:
    """Each XLA flag setting in a fresh process timing the flax GPT mid step AND dlzoo's torch
    step interleaved: the jax / torch ratio, with torch as the control for the machine's load."""
    out = {}
    for label, env in THREAD_VARIANTS.items():
        command = [sys.executable, os.path.abspath(__file__), "_threads-child", "--trials", str(args.trials)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
        if done.returncode != 0:
            tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
            out[label] = {"env": env, "error": tail[0][:200]}
            continue
        out[label] = {"env": env, **json.loads(done.stdout.strip().splitlines()[-1])}
    return out


def threads_child(args) -> None:
    arch, config, tensors, inputs, cots = gpt_mid()
    steps = {name: bench_step(arch, name, config, tensors, inputs, cots) for name in ("torch", "flax")}
    result = interleave(steps, args.trials)
    print(json.dumps({name: r["median_s"] for name, r in result.items()} | {"load": loadavg()}))


def xla_donation(args) -> dict:
    """The flax GPT mid step with its buffers donated (today) vs not, in one process."""
    import jax

    arch, config, tensors, inputs, cots = gpt_mid()
    real = jax.jit

    def no_donation(fun=None, **kwargs):
        kwargs.pop("donate_argnums", None)
        return real(fun, **kwargs) if fun is not None else (lambda f: real(f, **kwargs))

    with patched(jax, "jit", no_donation):
        undonated = bench_step(arch, "flax", config, tensors, inputs, cots)
    donated = bench_step(arch, "flax", config, tensors, inputs, cots)
    return interleave({"donated (today)": donated, "not donated": undonated}, args.trials)


def xla_conv(args) -> dict:
    """ResNet-18's 3x3 convolutions at 96x96 input (batch 16), forward + both gradients:
    jax NHWC (the layout dlzoo's JAX models use) and NCHW vs torch NCHW (dlzoo's torch model)
    and channels_last."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rows = []
    for channels, side_ in ((64, 24), (128, 12), (256, 6), (512, 3)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, side_, side_, channels), np.float32)
        w = rng.standard_normal((3, 3, channels, channels), np.float32) * 0.05

        def conv(x, w):
            return jnp.sum(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

        def conv_nchw(x, w):
            return jnp.sum(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")) ** 2)

        grad = jax.jit(jax.value_and_grad(conv, argnums=(0, 1)))
        grad_nchw = jax.jit(jax.value_and_grad(conv_nchw, argnums=(0, 1)))
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        jx_nchw, jw_oihw = jnp.asarray(x.transpose(0, 3, 1, 2)), jnp.asarray(w.transpose(3, 2, 0, 1))
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
        tx_cl = tx.detach().to(memory_format=torch.channels_last).requires_grad_()
        tw_cl = tw.detach().to(memory_format=torch.channels_last).requires_grad_()

        def torch_step(x, w):
            (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum().backward()
            x.grad = w.grad = None

        result = interleave(
            {
                "jax NHWC": lambda: jax.block_until_ready(grad(jx, jw)),
                "jax NCHW": lambda: jax.block_until_ready(grad_nchw(jx_nchw, jw_oihw)),
                "torch NCHW": lambda: torch_step(tx, tw),
                "torch channels_last": lambda: torch_step(tx_cl, tw_cl),
            },
            args.trials,
            warmup=2,
        )
        rows.append({"shape": f"16x{side_}x{side_}x{channels}, 3x3", **{k: v["median_s"] for k, v in result.items()}})
    return {"rows": rows}


XLA_PARTS = {"profile": xla_profile, "matmul": xla_matmul, "threads": xla_threads, "donation": xla_donation, "conv": xla_conv}


def xla(args) -> None:
    document = {}
    for part in args.only:
        before = loadavg()
        result = XLA_PARTS[part](args)
        after = loadavg()
        document[part] = {"result": result, "load_before": before, "load_after": after}
        print(f"### {part}\n\nload average {before} -> {after}\n")
        print(render_xla(part, result) + "\n", flush=True)
    save(args.json, {"versions": versions(), "cpu": cpu_model(), "xla": document})


def render_xla(part: str, result: dict) -> str:
    if part == "profile":
        text = []
        for label, r in result.items():
            covered = sum(r["thunk_s"].values())
            rows = [
                {"kind": k, "ms": ms(v), "share": f"{100 * v / covered:.0f}%"}
                for k, v in sorted(r["thunk_s"].items(), key=lambda kv: -kv[1])[:12]
            ]
            text.append(
                f"{label}: step {ms(r['step_s'])} ms (best of 3); thunk time {ms(covered)} ms per step (thunks on the two "
                f"threads overlap, so it can exceed the step); optimized-HLO counts {r['hlo']}\n\n"
                + table(rows, [("thunk kind", "kind"), ("ms per step", "ms"), ("share of thunk time", "share")])
            )
        return "\n\n".join(text)
    if part == "matmul":
        rows = [
            {
                "shape": r["shape"],
                "count": r["count"],
                "jax": ms(r["jax"]),
                "torch": ms(r["torch"]),
                "ratio": f"{r['jax'] / r['torch']:.2f}",
                "jg": f"{r['jax GFLOP/s']:.0f}",
                "tg": f"{r['torch GFLOP/s']:.0f}",
            }
            for r in result["rows"]
        ]
        t = result["total_s"]
        columns = [("matmul", "shape"), ("per step", "count"), ("jax ms", "jax"), ("torch ms", "torch"), ("jax/torch", "ratio")]
        return (
            table(rows, columns + [("jax GFLOP/s", "jg"), ("torch GFLOP/s", "tg")])
            + f"\n\nAll the step's matmuls: jax {ms(t['jax'])} ms, torch {ms(t['torch'])} ms, ratio {t['jax'] / t['torch']:.2f}"
        )
    if part == "threads":
        rows = []
        for label, r in result.items():
            if "error" in r:
                rows.append({"variant": label, "env": str(r["env"]), "flax": "rejected: " + r["error"]})
            else:
                rows.append(
                    {
                        "variant": label,
                        "env": " ".join(f"{k}={v}" for k, v in r["env"].items()) or "-",
                        "flax": ms(r["flax"]),
                        "torch": ms(r["torch"]),
                        "ratio": f"{r['flax'] / r['torch']:.2f}",
                        "load": r["load"],
                    }
                )
        return table(
            rows,
            [
                ("variant", "variant"),
                ("environment", "env"),
                ("flax ms", "flax"),
                ("torch ms", "torch"),
                ("flax/torch", "ratio"),
                ("load", "load"),
            ],
        )
    if part == "donation":
        return table(ratio_rows(result, "donated (today)"), PATH_COLUMNS)
    rows = [
        {"shape": r["shape"], **{k: ms(v) for k, v in r.items() if k != "shape"}, "ratio": f"{r['jax NHWC'] / r['torch NCHW']:.2f}"}
        for r in result["rows"]
    ]
    return table(
        rows,
        [
            ("conv (fwd + grads)", "shape"),
            ("jax NHWC ms", "jax NHWC"),
            ("jax NCHW ms", "jax NCHW"),
            ("torch NCHW ms", "torch NCHW"),
            ("torch channels_last ms", "torch channels_last"),
            ("jax NHWC / torch NCHW", "ratio"),
        ],
    )


# --------------------------------------------------------------------------- 5. torch vs the references, with a control


REFERENCES_OF = {
    "gpt": ("transformers",),
    "bert": ("transformers",),
    "vit": ("transformers", "timm"),
    "resnet": ("transformers", "torchvision"),
}


def refs(args) -> None:
    """dlzoo's torch model twice (A and B: two copies of the same model on the same weights, the
    control) beside each reference of the architecture, at mid size, trials interleaved. A
    difference between dlzoo and a reference smaller than the one between A and B is not
    resolved by the timing; the profiler's self-CPU time per op, summed over three steps of A
    and of each reference, is the second measure."""
    from torch.profiler import ProfilerActivity, profile

    from dlzoo.zoo.bench import _reference_step
    from dlzoo.zoo.reference import vision_references_installed

    document = {}
    for arch in args.archs:
        preset, sets, batch, (flag, size) = MID[arch]
        seq, image = (size, None) if flag == "--seq-len" else (None, size)
        config, tensors, inputs, cots = setup(arch, preset, sets, batch, seq, image)
        steps = {"dlzoo torch A": bench_step(arch, "torch", config, tensors, inputs, cots)}
        for name in REFERENCES_OF[arch]:
            if name == "transformers" or vision_references_installed():
                steps[name] = _reference_step(name, arch, config, tensors, inputs, cots, "train")
        steps["dlzoo torch B"] = bench_step(arch, "torch", config, tensors, inputs, cots)
        before = loadavg()
        result = interleave(steps, args.trials, warmup=3)
        op_ms = {}
        for name in [n for n in steps if n != "dlzoo torch B"]:
            with profile(activities=[ProfilerActivity.CPU]) as trace:
                for _ in range(3):
                    steps[name]()
            op_ms[name] = sum(event.self_cpu_time_total for event in trace.key_averages()) / 3 / 1e3
        after = loadavg()
        a = result["dlzoo torch A"]["median_s"]
        rows = [
            {
                "impl": name,
                "median": ms(r["median_s"]),
                "iqr": f"{ms(r['q1_s'])}-{ms(r['q3_s'])}",
                "x A": f"{r['median_s'] / a:.3f}",
                "ops": f"{op_ms[name]:.1f}" if name in op_ms else "",
            }
            for name, r in result.items()
        ]
        print(f"### {arch} ({preset}, {sets}, batch {batch}, {flag} {size}); load average {before} -> {after}\n")
        columns = [("implementation", "impl"), ("median ms", "median"), ("IQR ms", "iqr"), ("x dlzoo A", "x A")]
        print(table(rows, [*columns, ("profiled self-CPU ms per step", "ops")]) + "\n", flush=True)
        document[arch] = {"result": result, "profiled_ms": op_ms, "load_before": before, "load_after": after}
    save(args.json, {"versions": versions(), "cpu": cpu_model(), "refs": document})


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    p = sub.add_parser("side", help="step time side by side at mid size (dlzoo bench per architecture)")
    p.add_argument("--archs", nargs="+", default=list(MID), choices=list(MID))
    p.add_argument("--trials", type=int, default=11)
    p.add_argument("--json", metavar="PATH", help="write the raw reports here")
    p = sub.add_parser("fixes", help="each perf fix: before (reconstructed here) vs today")
    p.add_argument("--only", nargs="+", default=list(FIXES), choices=list(FIXES))
    p.add_argument("--trials", type=int, default=None, help="default: per fix (5 for equinox-lr, whose before recompiles)")
    p.add_argument("--json", metavar="PATH")
    p = sub.add_parser("overhead", help="per-step overhead of every training path on the tiny GPT")
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--json", metavar="PATH")
    p = sub.add_parser("xla", help="why XLA:CPU is slower than torch here")
    p.add_argument("--only", nargs="+", default=list(XLA_PARTS), choices=list(XLA_PARTS))
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--json", metavar="PATH")
    p = sub.add_parser("refs", help="dlzoo's torch models against the references, with an A/A control")
    p.add_argument("--archs", nargs="+", default=list(MID), choices=list(MID))
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--json", metavar="PATH")
    p = sub.add_parser("_threads-child", help=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, default=9)
    for name in ("side", "fixes", "overhead", "refs"):
        sub.choices[name].add_argument(
            "--threads", type=int, choices=(1,), default=None, help="1: every framework single-threaded (torch and XLA:CPU)"
        )
    args = parser.parse_args()
    if getattr(args, "threads", None) == 1:  # before torch or jax is imported
        os.environ.update(SINGLE_THREAD)
    if args.section == "_threads-child":
        return threads_child(args)
    before = loadavg()
    command = "nice python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    print(f"# {command}\n# load average {before}; {cpu_model()}; {versions()}\n", flush=True)
    {"side": side, "fixes": fixes, "overhead": overhead, "xla": xla, "refs": refs}[args.section](args)
    print(f"\n# load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
