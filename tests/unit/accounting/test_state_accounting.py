"""States that keep alerts right (issue 11): the noise floor for devices nobody holds, and MIG
parents that carry only their unallocated share of the GPU (none at all when fully sliced)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_core_accounting import INSTANCE_PRICE, Rig, devices, host_context, rig, total

from exporter.accounting.snapshot import Snapshot
from exporter.config import ConfigInvalid
from exporter.config.load import parse_config
from exporter.config.model import AccountingSettings
from exporter.exposition.collector import build_families

__all__ = ["rig"]  # the fixture, shared with the core accounting tests

# --- noise floor ----------------------------------------------------------------------------------


def _housekeeping_host() -> dict[str, object]:
    """GPU 0 and 1 at 2 % with nobody on them (monitoring agents), GPU 2 at 2 % held by a process,
    GPU 3 at 10 % with nobody on it (real work from something invisible to NVML's process list)."""
    return {
        "gpus": [
            {"index": 0, "utilization": {"constant": 0.02}},
            {"index": 1, "utilization": {"constant": 0.02}},
            {"index": 2, "utilization": {"constant": 0.02}},
            {"index": 3, "utilization": {"constant": 0.10}},
        ],
        "processes": [{"pid": 7, "device": "2", "memory": "1GiB"}],
    }


async def test_unheld_gpu_at_housekeeping_load_is_idle_free_and_its_idle_clock_runs(
    rig: Callable[..., Rig],
) -> None:
    r = rig(_housekeeping_host(), context=host_context(price=16.0))
    await r.step(1.0)
    for _ in range(12):
        snap = await r.step()
    by = devices(snap)
    assert by["nvidia0"].state == "idle_free"
    assert by["nvidia0"].idle_seconds == pytest.approx(60.0)
    assert [k[2] for k, _ in by["nvidia0"].idle_cost] == ["idle_free"]
    # Held at 2 %: above idle_threshold (0.01), the holder is doing a little work.
    assert by["nvidia2"].state == "active"
    assert by["nvidia3"].state == "active"  # 10 % is above the floor: someone computes
    assert by["nvidia3"].idle_seconds == 0.0


async def test_noise_floor_is_configurable(rig: Callable[..., Rig]) -> None:
    r = rig(_housekeeping_host(), AccountingSettings(noise_floor=0.15))
    await r.step(1.0)
    by = devices(await r.step())
    assert by["nvidia3"].state == "idle_free"
    r = rig(_housekeeping_host(), AccountingSettings(noise_floor=0.0))
    await r.step(1.0)
    assert devices(await r.step())["nvidia0"].state == "active"  # the old behaviour, on request


def test_noise_floor_default_and_value_from_the_file() -> None:
    assert parse_config({}).accounting.noise_floor == pytest.approx(0.05)
    assert parse_config({"accounting": {"noise_floor": 0}}).accounting.noise_floor == 0.0
    assert parse_config({"accounting": {"noise_floor": 0.2}}).accounting.noise_floor == pytest.approx(0.2)


@pytest.mark.parametrize("value", [1, 1.0, 1.5, -0.01, "low", True, float("nan"), [0.1]])
def test_bad_noise_floor_is_named_with_the_fix(value: object) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"accounting": {"noise_floor": value}}, source="test.yml")
    assert len(info.value.errors) == 1, info.value.errors
    message = str(info.value)
    assert "accounting.noise_floor" in message
    assert "from 0 up to, not including, 1" in message
    assert "Traceback" not in message


# --- MIG ------------------------------------------------------------------------------------------

PER_GPU = INSTANCE_PRICE / 8


def _device_series(snap: Snapshot, device: str) -> set[str]:
    return {f.name for f in build_families(snap) for s in f.samples if s.labels.get("device") == device}


async def _mig_host(rig: Callable[..., Rig]) -> Snapshot:
    r = rig("a100-mig")
    await r.step(1.0)
    for _ in range(12):
        snap = await r.step()
    return snap


async def test_fully_sliced_parent_has_no_state_price_or_money(rig: Callable[..., Rig]) -> None:
    snap = await _mig_host(rig)
    parent = devices(snap)["nvidia5"]
    assert parent.price_per_hour is None  # not 1.6e-15 $/h of float residue
    assert parent.cost == () and parent.idle_cost == () and parent.waste == ()
    series = _device_series(snap, "nvidia5")
    for absent in (
        "accel_state",
        "accel_state_seconds_total",
        "accel_idle_seconds",
        "accel_price_dollars_per_hour",
        "accel_cost_dollars_total",
        "accel_idle_cost_dollars_total",
        "accel_waste_dollars_total",
    ):
        assert absent not in series, absent
    for kept in ("accel_device_info", "accel_device_up", "accel_memory_total_bytes", "accel_power_watts"):
        assert kept in series, kept
    # Its slices carry the whole GPU: held, so active (NVML cannot see MIG activity), never idle.
    slices = {n: d for n, d in devices(snap).items() if n.startswith("nvidia5-mig")}
    assert sorted(slices) == ["nvidia5-mig1", "nvidia5-mig5", "nvidia5-mig6"]
    assert {d.state for d in slices.values()} == {"active"}
    assert sum(d.price_per_hour or 0.0 for d in slices.values()) == pytest.approx(PER_GPU, rel=1e-15)


async def test_partly_sliced_parent_carries_its_exact_unallocated_share_as_idle_free(
    rig: Callable[..., Rig],
) -> None:
    snap = await _mig_host(rig)
    by = devices(snap)
    parent, slice4g = by["nvidia2"], by["nvidia2-mig2"]
    # 7 compute slices, 4 allocated: the parent carries exactly 3/7, not 1 - 4/7 in floats.
    assert parent.identity.price_units == 3 / 7
    assert slice4g.identity.price_units == 4 / 7
    assert parent.price_per_hour == PER_GPU * (3 / 7)
    assert parent.state == "idle_free" and slice4g.state == "active"
    assert [k[2] for k, _ in parent.idle_cost] == ["idle_free"]
    assert parent.idle_seconds > 0
    assert parent.price_per_hour + slice4g.price_per_hour == pytest.approx(PER_GPU, rel=1e-15)
    assert total(parent.cost) + total(slice4g.cost) == pytest.approx(total(by["nvidia1"].cost), rel=1e-12)


async def test_every_mig_layout_splits_one_gpu_exactly(rig: Callable[..., Rig]) -> None:
    by = devices(await _mig_host(rig))
    for gpu, expected in (("nvidia0", [1, 3, 2, 1]), ("nvidia2", [3, 4]), ("nvidia5", [0, 3, 2, 2])):
        units = [d.identity.price_units for n, d in by.items() if n == gpu or n.startswith(gpu + "-mig")]
        # Each share is exactly k/7 (parent first), and the sevenths add up to one GPU.
        assert units == [k / 7 for k in expected], gpu
        assert sum(expected) == 7
    assert sum(d.price_per_hour or 0.0 for d in by.values()) == pytest.approx(INSTANCE_PRICE, rel=1e-15)
