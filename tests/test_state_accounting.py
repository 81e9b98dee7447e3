"""States that keep alerts right (issue 11): the noise floor for devices nobody holds, and MIG
parents that carry only their unallocated share of the GPU (none at all when fully sliced)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_core_accounting import Rig, devices, host_context, rig

from exporter.config import ConfigInvalid
from exporter.config.load import parse_config
from exporter.config.model import AccountingSettings

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
