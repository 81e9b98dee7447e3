"""The NVML inventory on its own: enumeration, MIG layout, re-enumeration that keeps unchanged devices."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.clock import ManualClock
from exporter.sim.fake_nvml import FakeNvml
from exporter.sim.scenario import parse_scenario
from exporter.sources.nvml_inventory import INVENTORY_SECONDS, Inventory, handle_key, reason, text

# GPU 0 starts with a 3g and a 2g instance; at 100 s the 2g is destroyed and a 1g created.
MIG_CHANGES = {
    "host": {"instance_type": "p4de.24xlarge"},
    "gpus": [
        {
            "index": 0,
            "model": "NVIDIA A100-SXM4-80GB",
            "mig": [
                {"gi": 1, "slices": 3, "memory_total": "40GiB"},
                {"gi": 5, "slices": 2, "memory_total": "20GiB", "end": "100s"},
                {"gi": 13, "slices": 1, "memory_total": "10GiB", "start": "100s"},
            ],
        },
        {"index": 1, "model": "NVIDIA A100-SXM4-80GB"},
    ],
}


def _started(scenario: dict[str, Any], after: float = 0.0) -> tuple[ManualClock, Any, Inventory]:
    """A fake NVML and an inventory enumerated `after` seconds into the scenario."""
    clock = ManualClock()
    nvml = FakeNvml(parse_scenario(scenario, "test"), clock).module()
    nvml.nvmlInit()
    clock.advance(after)
    inventory = Inventory(clock)
    inventory.enumerate(nvml)
    return clock, nvml, inventory


def test_enumeration_lists_gpus_then_their_mig_instances_with_their_share_of_the_slices() -> None:
    _clock, _nvml, inventory = _started(MIG_CHANGES)
    by_name = {d.identity.device: d for d in inventory.devices}
    assert [d.identity.device for d in inventory.devices] == ["nvidia0", "nvidia0-mig1", "nvidia0-mig5", "nvidia1"]
    assert by_name["nvidia0"].mig_enabled and by_name["nvidia0"].identity.mig_parent
    assert by_name["nvidia0"].identity.price_units == pytest.approx(2 / 7)  # 2 of 7 slices unallocated
    assert (by_name["nvidia0-mig1"].slices, by_name["nvidia0-mig1"].identity.parent) == (3, "nvidia0")
    assert by_name["nvidia0-mig5"].identity.price_units == pytest.approx(2 / 7)
    assert by_name["nvidia1"].identity.price_units == 1.0 and not by_name["nvidia1"].mig_enabled
    assert inventory.known == tuple(d.identity for d in inventory.devices)
    assert inventory.event_set is not None


def test_refresh_waits_its_period_then_follows_the_layout_and_keeps_unchanged_devices() -> None:
    clock, nvml, inventory = _started(MIG_CHANGES, after=90.0)
    kept = {d.identity.device: d for d in inventory.devices}
    clock.advance(INVENTORY_SECONDS - 1.0)  # the layout changed at 100 s, but no refresh is due yet
    assert inventory.refresh(nvml) == []
    assert [d.identity.device for d in inventory.devices][2] == "nvidia0-mig5"
    clock.advance(1.0)
    inventory.refresh(nvml)
    names = [d.identity.device for d in inventory.devices]
    assert names == ["nvidia0", "nvidia0-mig1", "nvidia0-mig13", "nvidia1"]
    assert inventory.devices[1] is kept["nvidia0-mig1"]  # its sample cursor and cached answers stay
    assert inventory.devices[3] is kept["nvidia1"]
    assert inventory.devices[0] is not kept["nvidia0"]  # its share of the slices changed: 3 of 7 free
    assert inventory.devices[0].identity.price_units == pytest.approx(3 / 7)


def test_refresh_returns_the_devices_that_are_gone_once() -> None:
    clock, nvml, inventory = _started(MIG_CHANGES)
    gone_before = inventory.refresh(nvml)  # not due yet: nothing changes
    assert gone_before == []
    clock.advance(INVENTORY_SECONDS + 100.0)
    gone = inventory.refresh(nvml)
    assert sorted(d.identity.device for d in gone) == ["nvidia0", "nvidia0-mig5"]
    clock.advance(INVENTORY_SECONDS)
    assert inventory.refresh(nvml) == []  # the same layout again: nothing more is gone


def test_an_event_from_a_gpu_that_no_longer_answers_is_found_by_its_handle() -> None:
    _clock, nvml, inventory = _started(MIG_CHANGES)
    gpu1 = inventory.devices[3]
    assert inventory.device_for_event(nvml, gpu1.handle) is gpu1

    def lost(_handle: Any) -> str:
        raise nvml.NVMLError_GpuIsLost(nvml.NVML_ERROR_GPU_IS_LOST)

    nvml.nvmlDeviceGetUUID = lost
    assert inventory.device_for_event(nvml, gpu1.handle) is gpu1
    assert handle_key(gpu1.handle) == handle_key(gpu1.handle)


def test_helpers_name_errors_and_decode_driver_strings() -> None:
    class NVMLError_GpuIsLost(Exception):  # the binding's naming
        pass

    assert reason(NVMLError_GpuIsLost()) == "GpuIsLost"
    assert reason(ValueError()) == "ValueError"
    assert text(b"NVIDIA A100") == "NVIDIA A100"
    assert text("580.65") == "580.65"
