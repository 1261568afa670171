"""Training memory and communication per device when a step is spread over several devices.

Two strategies, the ones generated projects implement (``[dist] strategy``):

- ``data`` (torch DistributedDataParallel; a JAX mesh with parameters replicated; keras
  DataParallel): every device holds the whole training state (weights, gradients, AdamW moments)
  and its share of the global batch. Gradients are all-reduced each step: a ring all-reduce moves
  ``2 (N - 1) / N`` times the gradient bytes through every device (Rajbhandari et al., 2020,
  "ZeRO", arXiv:1910.02054, section 7: standard data parallelism communicates 2 Psi).
- ``fsdp`` (torch FSDP2 ``fully_shard`` per block; a JAX mesh with parameters and optimizer state
  sharded over the data axis; keras ModelParallel): weights, gradients and AdamW moments are split
  ``N`` ways (ZeRO stage 3). Each block's weights are all-gathered before its forward and again
  before its backward, and its gradients reduce-scattered: ``3 (N - 1) / N`` times the parameter
  bytes per step (ZeRO, section 7.2.2: 1.5x data parallelism). While a block runs, its full
  weights and gradients are materialised: the largest unit (one transformer block or ResNet
  stage, or what sits outside them: embeddings, head) is the transient added to the sharded
  state.

Activations follow the per-device batch, ``ceil(global batch / N)``: both strategies split the
batch. Bytes are per device; communication is bytes sent per device per optimizer step.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ...zoo import estimates
from ...zoo.configs import ZooError
from ...zoo.spec import canonical_spec

STRATEGIES = ("data", "fsdp")
_GRAD_BYTES = 4  # gradients are reduced in fp32 (master weights are fp32 in every precision here)
# A unit FSDP gathers at once: a transformer block, or a ResNet stage; the rest is the root unit.
_UNIT = re.compile(r"^(blocks\.\d+|stages\.\d+)\.")


@dataclass(frozen=True)
class DeviceMemory:
    """One device's share of a training step, in bytes."""

    devices: int
    strategy: str
    batch_per_device: int
    state_bytes: int  # weights (+ 16-bit copy) + gradients + AdamW moments held between steps
    gathered_bytes: int  # fsdp: the largest unit's full weights and gradients while it runs
    activation_bytes: int
    communication_bytes: int  # sent per device per optimizer step

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.gathered_bytes + self.activation_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def check(devices: int, strategy: str) -> None:
    """ZooError for a device count below 1 or an unknown strategy."""
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ZooError(f"devices must be a positive integer, got {devices!r}")
    if strategy not in STRATEGIES:
        raise ZooError(f"unknown sharding {strategy!r}; expected one of: {', '.join(STRATEGIES)} (torch's ddp is data)")


def largest_unit_params(arch: str, config) -> int:
    """Elements of the largest FSDP unit: one transformer block, one ResNet stage, or the root
    (every tensor outside them: embeddings, final norm, head)."""
    units: dict[str, int] = {}
    for name, spec in canonical_spec(arch, config).items():
        match = _UNIT.match(name)
        key = match.group(1) if match else ""
        units[key] = units.get(key, 0) + math.prod(spec.shape)
    return max(units.values())


def per_device(mem: estimates.Memory, arch: str, config, *, devices: int, strategy: str, batch_size: int) -> DeviceMemory:
    """``mem`` (the whole step on one device, at ``batch_size``) spread over ``devices``."""
    check(devices, strategy)
    state = mem.weights_bytes + mem.weight_copy_bytes + mem.gradient_bytes + mem.optimizer_bytes
    share = (devices - 1) / devices
    if strategy == "data":
        gathered, comm = 0, round(2 * share * mem.params * _GRAD_BYTES)
    else:
        unit = largest_unit_params(arch, config)
        copy = 2 if mem.weight_copy_bytes else 0
        # the unit's fp32 weights, their 16-bit copy under mixed precision and its fp32 gradients
        gathered = 0 if devices == 1 else unit * (4 + copy + _GRAD_BYTES)
        state = math.ceil(state / devices)
        comm = round(3 * share * mem.params * 4)
    local = math.ceil(batch_size / devices)
    return DeviceMemory(
        devices=devices,
        strategy=strategy,
        batch_per_device=local,
        state_bytes=state,
        gathered_bytes=gathered,
        activation_bytes=local * mem.activation_bytes_per_example,
        communication_bytes=comm,
    )


def max_global_batch(mem: estimates.Memory, arch: str, config, *, devices: int, strategy: str, device_bytes: int, headroom=0.1) -> int:
    """The largest global batch (a multiple of ``devices``) whose per-device memory fits in
    ``(1 - headroom) * device_bytes``; 0 when not one example per device fits."""
    fixed = per_device(mem, arch, config, devices=devices, strategy=strategy, batch_size=devices)
    free = int(device_bytes * (1.0 - headroom)) - fixed.state_bytes - fixed.gathered_bytes
    return max(0, free // mem.activation_bytes_per_example) * devices
