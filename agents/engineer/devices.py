"""Devices the estimates can target: NVIDIA A100, H100 and H200 from their datasheets
(facts.toml ``[device.*]``), and this machine's CPU, whose fp32 matmul ceiling is measured."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from ...zoo.configs import ZooError
from .facts import Device, load

PRECISION_KEYS = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Target:
    """A device resolved for one precision: the peak the time estimate divides by."""

    device: Device
    precision: str
    peak_flops: float  # dense, FLOP/s
    memory_bytes: int | None  # None for the CPU (host memory is not the limit we model)
    utilisation: float  # the default model-FLOPs utilisation for this device
    basis: str  # where the peak comes from, in words

    def to_dict(self) -> dict:
        return {
            "device": self.device.key,
            "name": self.device.name,
            "precision": self.precision,
            "peak_flops": self.peak_flops,
            "memory_bytes": self.memory_bytes,
            "default_utilisation": self.utilisation,
            "basis": self.basis,
            "source": self.device.fact.source,
            "checked": self.device.fact.checked,
        }


def device_names() -> list[str]:
    return list(load().devices)


def find_device(name: str) -> Device:
    """A device by key or alias, case-insensitive; ZooError listing the choices otherwise."""
    key = name.strip().lower()
    for device in load().devices.values():
        if key == device.key or key in device.aliases:
            return device
    raise ZooError(f"unknown device {name!r}; expected one of: {', '.join(load().devices)}")


@functools.lru_cache(maxsize=1)
def cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """This CPU's fp32 matmul ceiling in FLOP/s: the best of ``repeats`` n x n x n sgemms through
    numpy's BLAS (all its threads), after one warm-up. A shared or busy machine measures lower."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def resolve(name: str, precision: str) -> Target:
    """The peak of ``name`` at ``precision`` (fp32, tf32, bf16 or fp16; dense tensor-core figures
    for the GPUs). The CPU is measured in fp32 only."""
    device = find_device(name)
    if precision not in PRECISION_KEYS:
        raise ZooError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISION_KEYS)}")
    if device.measured:
        if precision != "fp32":
            raise ZooError(
                "the cpu ceiling is measured in fp32 only; use --precision fp32 with --device cpu "
                "(16-bit matmuls on CPUs without bf16 units are usually slower than fp32)"
            )
        flops = cpu_matmul_flops()
        return Target(
            device,
            precision,
            flops,
            None,
            device.utilisation,
            f"measured fp32 matmul ceiling of this CPU ({flops / 1e9:.1f} GFLOP/s, numpy sgemm 1024^3)",
        )
    tflops = device.dense_tflops[precision]
    sparse = device.sparse_tflops.get(precision)
    basis = f"{device.name} {precision} dense peak {tflops:g} TFLOPS (datasheet"
    basis += f": {sparse:g} with 2:4 sparsity, halved)" if sparse else ", non-tensor-core)" if precision == "fp32" else ")"
    return Target(device, precision, tflops * 1e12, device.memory_bytes, device.utilisation, basis)
