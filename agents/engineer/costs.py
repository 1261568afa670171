"""Cost report for one model and workload: the numbers ``dlzoo info`` and ``dlzoo recommend`` print.

Arithmetic comes from ``dlzoo.zoo.estimates``; the device (its peak, memory and default
utilisation) from the facts table. On the CPU the reference kernels are modelled (what torch's
eager CPU kernels store), on the GPUs the fused ones (flash attention, 1-byte dropout masks).
"""

from __future__ import annotations

from typing import Any

from ...zoo import estimates
from ...zoo.configs import ZooError
from . import sharding as sharding_module
from .devices import Target, resolve
from .facts import load


def default_utilisation(arch: str, target: Target) -> tuple[float, str]:
    """The utilisation assumed when none is given, with its basis: for ResNets on a GPU the
    measured ResNet-50 throughput (facts: resnet50-throughput); otherwise the device's default
    (GPUs: the transformer MFU range of facts: mfu; the CPU: half its measured matmul ceiling)."""
    if arch == "resnet" and not target.device.measured:
        rule = load().rule("resnet50-throughput")
        return rule.value["utilisation"], "ResNet-50's measured utilisation on an A100 (resnet50-throughput)"
    if target.device.measured:
        return target.utilisation, "half the measured matmul ceiling (a dlzoo heuristic for small eager models)"
    return target.utilisation, "transformer training runs reach 21-46% of peak (mfu)"


def cost_report(
    arch: str,
    config,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    device: str | None = None,
    utilisation: float | None = None,
    checkpointing: bool = False,
    seq_len: int | None = None,
    image_size: int | None = None,
    devices: int = 1,
    sharding: str = "data",
) -> dict[str, Any]:
    """Parameters, FLOPs, memory at ``batch_size`` and ``precision``, and with a ``device``: the
    largest batch that fits (with and without activation checkpointing) and the time per step at
    ``utilisation`` (the device's default when None). ``batch_size`` is the global batch; with
    ``devices`` > 1 the memory, largest batch and time are per device under ``sharding`` ("data"
    or "fsdp", see ``sharding``), with the communication each step needs. Raises ZooError
    (EstimateError) for options that do not apply to ``arch``, a sequence beyond the context, an
    unknown device/precision/sharding or a device count below 1."""
    sharding_module.check(devices, sharding)
    w = estimates.workload(arch, config, seq_len=seq_len, image_size=image_size)
    opts = {"seq_len": seq_len, "image_size": image_size}
    f = estimates.flops(arch, config, **opts)
    target = resolve(device, precision) if device else None
    kernels = "fused" if target is not None and not target.device.measured else "reference"
    mem = estimates.memory(arch, config, batch_size=batch_size, precision=precision, checkpointing=checkpointing, kernels=kernels, **opts)
    report: dict[str, Any] = {
        "arch": arch,
        "example": w.unit,
        "params": mem.params,
        "flops": f.as_dict(),
        "memory": {**mem.as_dict()},
    }
    split = sharding_module.per_device(mem, arch, config, devices=devices, strategy=sharding, batch_size=batch_size)
    if devices > 1:
        report["per_device"] = split.as_dict()
    if target is None:
        return report
    u, basis = default_utilisation(arch, target) if utilisation is None else (utilisation, "as given")
    if not 0 < u <= 1:
        raise ZooError(f"--utilisation must be in (0, 1], got {u}")
    dev: dict[str, Any] = {**target.to_dict(), "utilisation": u, "utilisation_basis": basis, "kernels": kernels}
    if target.memory_bytes is not None:
        for key, ckpt in (("max_batch_size", False), ("max_batch_size_checkpointing", True)):
            one = estimates.memory(arch, config, batch_size=1, precision=precision, checkpointing=ckpt, kernels=kernels, **opts)
            dev[key] = sharding_module.max_global_batch(
                one, arch, config, devices=devices, strategy=sharding, device_bytes=target.memory_bytes
            )
        dev["headroom"] = 0.1
        dev["fits"] = split.total_bytes <= 0.9 * target.memory_bytes
    # the devices compute in parallel, each on its share of the batch (communication overlapped)
    seconds = estimates.step_time(
        arch, config, batch_size=split.batch_per_device, peak_flops=target.peak_flops, utilisation=u, checkpointing=checkpointing, **opts
    )
    dev["step_seconds"] = seconds
    dev["examples_per_second"] = batch_size / seconds
    if f.tokens:
        dev["tokens_per_second"] = batch_size * f.tokens / seconds
    report["device"] = dev
    return report
