"""Side-by-side speed of every installed framework and the reference implementations.

Every implementation runs the SAME canonical weights on the SAME inputs. A step is either a
forward pass (``mode="forward"``) or a training step (``mode="train"``: forward, backward and an
AdamW update, dropout on) on the fixed objective ``sum(outputs * cotangents)``, in each
framework's low-overhead path (``benchmark_step`` of each backend: torch eager with fused
AdamW; NNX split once under ``jax.jit``; equinox partitioned once under ``jax.jit``; haiku
``jax.jit``; keras' jitted stateless step on jax, and keras' own ``train_on_batch`` as
"keras-fit"). The references are ``transformers``' model, and where installed torchvision's
ResNet and timm's ViT (``reference.vision_model``), on the same weights, stepped with the same
fused torch AdamW.

Timings on a shared machine drift, and whichever implementation runs first in a fresh process
looks slower: trials are interleaved (every round runs each implementation once, in a rotated
order), and the headline is the ratio of medians, never an absolute time. The first call of a
step is timed on its own as the compile time (it includes one step).

Throughput counts examples (and tokens for the text models); achieved GFLOP/s uses the analytic
FLOPs of ``dlzoo.zoo.estimates`` (a multiply-add is 2 FLOPs; training = 3x forward) against this
machine's fp32 matmul ceiling: a square matmul of ``CEILING_SIZE`` timed once in every round of
the trials, its median (a ceiling measured once, apart from the steps, met another load than
they did on a shared machine, and their fraction of it exceeded 1), in the fastest library
installed (torch, jax or numpy: ``ceiling_matmul``). Peak step memory is the
growth of the process's peak resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) over the resident set before the implementation's first three steps:
activations, gradients, optimizer temporaries and compiled buffers, not the weights already
held.

Each trial also counts the process's minor page faults (``page_faults_per_step``, median): the
pages a step touches for the first time (4 KiB each here, or 2 MiB where memory was advised for
huge pages). glibc's malloc hands every allocation above its mmap threshold (32 MiB at most)
back to the kernel when it is freed, so a step that allocates its activations afresh faults them
in, zero-filled, every time: on this 2-core machine 540-580 thousand faults (2.1-2.3 GiB) per
GPT-2 124M step in the JAX frameworks and 260-370 thousand in torch, up to 40% of a step. A
caching allocator (tcmalloc, ``LD_PRELOAD``) keeps them, so the report names the allocator in
use (``allocator``); docs/bench.md gives the measured difference.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .configs import ZooError, get_config
from .estimates import estimate
from .frameworks import backend, installed_frameworks, require

CEILING_SIZE = 2048
IMPLEMENTATIONS = ("torch", "transformers", "torchvision", "timm", "flax", "equinox", "haiku", "keras", "keras-fit")
REFERENCES = ("transformers", "torchvision", "timm")
# The architectures each non-transformers reference implements here.
VISION_REFERENCE_ARCHS = {"torchvision": ("resnet",), "timm": ("vit",)}


def matmul_candidates(size: int = CEILING_SIZE) -> list[tuple[Callable[[], Any], str]]:
    """One fp32 square matmul of ``size`` (2 size^3 FLOPs) in every library installed here, each
    with its label: torch (its kernels run the torch models), jax (``jax.jit``: XLA's run the JAX
    and Keras-on-jax models) and numpy."""
    import importlib.util

    candidates = []
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), np.float32), rng.random((size, size), np.float32)
    if importlib.util.find_spec("torch"):
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates.append(((lambda: ta @ tb), f"torch {torch.__version__}, {torch.get_num_threads()} threads"))
    if importlib.util.find_spec("jax"):
        import jax

        ja, jb, matmul = jax.numpy.asarray(a), jax.numpy.asarray(b), jax.jit(jax.numpy.matmul)
        candidates.append(((lambda: matmul(ja, jb).block_until_ready()), f"jax {jax.__version__} (XLA:{jax.default_backend()})"))
    candidates.append(((lambda: a @ b), f"numpy {np.__version__}"))
    return candidates


def ceiling_matmul(size: int = CEILING_SIZE) -> tuple[Callable[[], Any], str]:
    """The fastest fp32 square matmul of ``size`` here, and its library: each of
    ``matmul_candidates`` warmed up and timed three times, the fastest by its best time. The
    libraries' kernels differ (measured on a 2-core CPU: jax's 2048 matmul ~2x torch's), and the
    machine's ceiling is what the fastest of them reaches, whichever a step uses."""
    candidates = matmul_candidates(size)
    for run, _ in candidates:
        run()
    return min(candidates, key=lambda candidate: min(_seconds(candidate[0]) for _ in range(3)))


def matmul_ceiling_gflops(size: int = CEILING_SIZE, repeats: int = 10) -> tuple[float, str]:
    """fp32 GFLOP/s of the best of ``repeats`` square matmuls of the fastest library, and its label."""
    run, library = ceiling_matmul(size)
    best = min(_seconds(run) for _ in range(repeats))
    return 2 * size**3 / best / 1e9, library


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_with_faults(fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, minor page faults of the whole process) of one call."""
    faults = _minor_faults()
    seconds = _seconds(fn)
    return seconds, _minor_faults() - faults


ALLOCATORS = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc", "libmimalloc": "mimalloc"}


def allocator(maps: str | None = None) -> str:
    """The malloc serving this process: a caching allocator preloaded or linked in (its library
    is mapped: ``/proc/self/maps``), else the C library's (``glibc malloc`` on Linux). ``maps``
    is that file's text (read here when None); ``unknown`` where it cannot be read."""
    if maps is None:
        try:
            with open("/proc/self/maps") as file:
                maps = file.read()
        except OSError:
            return "unknown"
    for library, name in ALLOCATORS.items():
        if f"/{library}" in maps:
            return name
    return "glibc malloc" if "/libc.so" in maps or "/libc-" in maps else "system malloc"


def _memory_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_step_memory(step: Callable[[], None]) -> int | None:
    """Bytes the peak resident set grows by over three steps (None where Linux' counters are absent)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    before = _memory_kib("VmRSS")
    for _ in range(3):
        step()
    peak = _memory_kib("VmHWM")
    return None if before is None or peak is None else max(0, peak - before) * 1024


def bench_inputs(arch: str, config, batch: int, seq_len: int | None, image_size: int | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    if arch in ("gpt", "bert"):
        limit = config.context_length if arch == "gpt" else config.max_positions
        length = seq_len or min(128, limit)
        if length > limit:
            raise ZooError(
                f"--seq-len {length} exceeds the {arch} context of {limit} positions; use at most {limit} or a config with a longer context"
            )
        return {"input_ids": rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)}
    size = image_size or (config.image_size if arch == "vit" else 64)
    return {"pixel_values": rng.standard_normal((batch, size, size, config.num_channels)).astype(np.float32)}


def _reference_step(name: str, arch: str, config, tensors, inputs, cotangents, mode: str) -> Callable[[], None]:
    """The reference ``name`` (transformers, torchvision or timm) on the same weights, stepped
    like dlzoo's torch model."""
    import torch

    from .reference import transformers_model, vision_model

    model = transformers_model(arch, config, tensors) if name == "transformers" else vision_model(arch, config, tensors)
    tin = {
        k: (torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() if k == "pixel_values" else torch.from_numpy(v.astype(np.int64)))
        for k, v in inputs.items()
    }
    cots = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in cotangents.items()}

    def outputs():
        if name != "transformers":
            return {"logits": model(tin["pixel_values"])}
        if arch != "bert":
            return {"logits": model(**tin).logits}
        # every output dlzoo's model gives (reference.transformers_outputs' names), so that both
        # differentiate the same heads
        out = getattr(model, "bert", model)(**tin)
        result = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
        if hasattr(model, "cls"):
            result["mlm_logits"] = model.cls.predictions(out.last_hidden_state)
        if hasattr(model, "classifier"):
            result["logits"] = model.classifier(model.dropout(out.pooler_output))
        return result

    if mode == "forward":
        model.eval()

        @torch.no_grad()
        def forward():
            outputs()

        return forward
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = outputs()
        sum((out[k] * c).sum() for k, c in cots.items() if out.get(k) is not None).backward()
        optimizer.step()

    step.model = model  # for tests: what the step updates
    return step


def run(
    arch: str,
    preset: str = "tiny",
    *,
    batch: int = 8,
    seq_len: int | None = None,
    image_size: int | None = None,
    implementations: list[str] | None = None,
    mode: str = "train",
    trials: int = 15,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Benchmark ``arch`` in every requested (default: every installed) implementation.

    Returns the ``--json`` document of ``dlzoo bench`` (docs/bench.md): the setup, the machine's
    matmul ceiling, and per implementation the median step time and its interquartile range in
    seconds, the ratio to the fastest and to torch, compile time (s), throughput (examples/s and
    tokens/s), achieved GFLOP/s and its fraction of the ceiling, and peak step memory (bytes).

    Raises ZooError for an unknown implementation, one that is not installed, a sequence longer
    than the context, or an image size a ViT config was not built for.
    """
    if mode not in ("forward", "train"):
        raise ZooError(f"--mode must be forward or train, got {mode!r}")
    if trials < 3:
        raise ZooError(f"--trials must be at least 3 for a median and spread, got {trials}")
    overrides = dict(overrides or {})
    if arch == "vit" and image_size:
        overrides.setdefault("image_size", image_size)
    config = get_config(arch, preset, **overrides)
    if arch in ("gpt", "bert") and image_size:
        raise ZooError(f"--image-size does not apply to {arch}; use --seq-len")
    if arch in ("vit", "resnet") and seq_len:
        raise ZooError(f"--seq-len does not apply to {arch}; use --image-size")
    inputs = bench_inputs(arch, config, batch, seq_len, image_size, seed)  # argument errors before environment ones
    available = _available(arch)
    chosen = list(implementations or [name for name in IMPLEMENTATIONS if name in available])
    unknown = [name for name in chosen if name not in IMPLEMENTATIONS]
    if unknown:
        raise ZooError(f"unknown implementation(s) {', '.join(unknown)}; expected some of: {', '.join(IMPLEMENTATIONS)}")
    for name in chosen:
        if arch not in VISION_REFERENCE_ARCHS.get(name, (arch,)):
            raise ZooError(
                f"{name} holds no {arch} model (it is the reference for {', '.join(VISION_REFERENCE_ARCHS[name])}); use transformers"
            )
    for name in chosen:
        if name in ("torch", "flax", "equinox", "haiku", "keras", "keras-fit"):
            require("keras" if name == "keras-fit" else name)  # names the extra to install
    missing = [name for name in chosen if name not in available]
    if missing:
        raise ZooError(
            f"not installed: {', '.join(missing)}; installed: {', '.join(available) or 'none'} "
            "(pip install 'dlzoo[all,reference]' for every framework and transformers; for torchvision and timm beside "
            "torch's CPU build: pip install --no-deps --target DIR torchvision==0.28.0 timm==1.0.31, then set DLZOO_VISION_REFS=DIR)"
        )
    if not chosen:
        raise ZooError("no framework is installed; install one, e.g. pip install 'dlzoo[torch]'")

    from .handle import load

    first = next(f for f in chosen if f in installed_frameworks()) if set(chosen) & set(installed_frameworks()) else "torch"
    source = load(arch, first, config=config, seed=seed)
    tensors = source.state_dict()
    shapes = {k: v.shape for k, v in source.apply(inputs).items()}
    rng = np.random.default_rng(seed + 1)
    cotangents = {k: rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape)) for k, shape in shapes.items()}

    ceiling_run, library = ceiling_matmul()
    ceiling_run()
    steps, compile_s, memory = {}, {}, {}
    for name in chosen:
        if name in REFERENCES:
            step = _reference_step(name, arch, config, tensors, inputs, cotangents, mode)
        else:
            framework = "keras" if name == "keras-fit" else name
            handle = load(arch, framework, config=config, weights=tensors)
            kwargs = {"fit": True} if name == "keras-fit" else {}
            step = backend(framework).benchmark_step(arch, config, handle.native, inputs, cotangents, mode=mode, seed=seed, **kwargs)
        compile_s[name] = _seconds(step)
        memory[name] = _peak_step_memory(step)
        steps[name] = step

    # The ceiling matmul is one more participant of every round: measured once at the start, it
    # met a different load than the steps did, and a fraction of it could exceed 1.
    times: dict[str, list[float]] = {name: [] for name in chosen}
    faults: dict[str, list[int]] = {name: [] for name in chosen}
    ceiling_times = []
    for trial in range(trials):
        order = chosen[trial % len(chosen) :] + chosen[: trial % len(chosen)]  # rotate who goes first
        for name in order:
            seconds, step_faults = _timed_with_faults(steps[name])
            times[name].append(seconds)
            faults[name].append(step_faults)
        ceiling_times.append(_seconds(ceiling_run))
    ceiling = 2 * CEILING_SIZE**3 / statistics.median(ceiling_times) / 1e9

    cost = estimate(
        arch,
        config,
        seq_len=inputs["input_ids"].shape[1] if "input_ids" in inputs else None,
        image_size=inputs["pixel_values"].shape[1] if "pixel_values" in inputs else None,
    )
    flops = (cost.flops_train_step if mode == "train" else cost.flops_forward) * batch
    tokens = batch * inputs["input_ids"].shape[1] if "input_ids" in inputs else None
    medians = {name: statistics.median(t) for name, t in times.items()}
    fastest = min(medians.values())
    rows = []
    for name in chosen:
        median = medians[name]
        q1, _, q3 = statistics.quantiles(times[name], n=4)
        rows.append(
            {
                "implementation": name,
                "median_s": median,
                "iqr_s": [q1, q3],
                "ratio_to_fastest": median / fastest,
                "ratio_to_torch": median / medians["torch"] if "torch" in medians else None,
                "compile_s": compile_s[name],
                "examples_per_s": batch / median,
                "tokens_per_s": tokens / median if tokens else None,
                "gflops": flops / median / 1e9,
                "fraction_of_ceiling": flops / median / 1e9 / ceiling,
                "peak_step_memory_bytes": memory[name],
                "page_faults_per_step": int(statistics.median(faults[name])),
            }
        )
    return {
        "arch": arch,
        "preset": preset,
        "config": config.to_dict(),
        "mode": mode,
        "batch": batch,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "trials": trials,
        "flops_per_step": flops,
        "ceiling_gflops": ceiling,
        "ceiling_library": library,
        "threads": os.cpu_count(),
        "allocator": allocator(),
        "results": rows,
    }


def _available(arch: str) -> list[str]:
    """The implementations installed here that hold ``arch``."""
    import importlib.util

    from .reference import vision_references_installed

    installed = installed_frameworks()
    names = [f for f in installed]
    if "torch" in installed and importlib.util.find_spec("transformers"):
        names.append("transformers")
    if "torch" in installed and vision_references_installed():
        names += [name for name, archs in VISION_REFERENCE_ARCHS.items() if arch in archs]
    if "keras" in installed:
        names.append("keras-fit")
    return names
