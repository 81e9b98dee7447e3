"""The dated built-in price table shipped in the package, and the OpenCost-style price split.

The table holds us-east-1 Linux on-demand prices from the AWS Price List API (see
`price_table.json` for its `as_of` date). It is the last resort before "unknown": always
labelled `builtin` with its date, so a stale price is visible rather than silently trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from exporter.context.price.price_bounds import price_problem

# OpenCost's default unit prices (configs/default.json): per vCPU-hour, per GiB-hour, per GPU-hour.
# Only their ratios matter: the instance price is split in proportion to them.
OPENCOST_CPU_WEIGHT = 0.031611
OPENCOST_RAM_WEIGHT_PER_GIB = 0.004237
OPENCOST_GPU_WEIGHT = 0.95


@dataclass(frozen=True)
class BuiltinTable:
    """Prices in USD per hour, accelerator counts and instance shapes by instance type."""

    as_of: str
    region: str
    prices: MappingProxyType[str, float]
    accelerators: MappingProxyType[str, int]
    shapes: MappingProxyType[str, tuple[int, float]]  # (vCPU, memory GiB)


def _parse(document: Any) -> BuiltinTable:
    # The shipped table obeys the same bounds as every other source (a test checks none is dropped).
    prices = {str(k): float(v) for k, v in document["prices"].items() if price_problem(float(v)) is None}
    accelerators = {str(k): int(v) for k, v in document["accelerators"].items()}
    shapes = {str(k): (int(v[0]), float(v[1])) for k, v in document.get("shapes", {}).items()}
    return BuiltinTable(
        as_of=str(document["as_of"]),
        region=str(document["region"]),
        prices=MappingProxyType(prices),
        accelerators=MappingProxyType(accelerators),
        shapes=MappingProxyType(shapes),
    )


@lru_cache(maxsize=1)
def builtin_table() -> BuiltinTable:
    """The table shipped in the package (read once)."""
    text = resources.files("exporter.context.price").joinpath("price_table.json").read_text(encoding="utf-8")
    return _parse(json.loads(text))


def opencost_accelerator_share(instance_type: str, table: BuiltinTable | None = None) -> float | None:
    """The accelerators' share of the instance price under OpenCost's default weights.

    share = 0.95·N / (0.95·N + 0.031611·vCPU + 0.004237·GiB), e.g. about 0.34 on p5.48xlarge
    (8 GPUs, 192 vCPU, 2048 GiB). None when the instance shape is not in the table (the caller
    then keeps the even split and says so). Neuron instances have no shape entry: OpenCost has no
    weight for NeuronCores.
    """
    table = table or builtin_table()
    shape = table.shapes.get(instance_type)
    count = table.accelerators.get(instance_type)
    if shape is None or not count:
        return None
    vcpu, memory_gib = shape
    gpu = OPENCOST_GPU_WEIGHT * count
    return gpu / (gpu + OPENCOST_CPU_WEIGHT * vcpu + OPENCOST_RAM_WEIGHT_PER_GIB * memory_gib)
