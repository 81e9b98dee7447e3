"""The `/` landing page (issue 16 item 8): what it shows, how it escapes, and that it renders in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ExporterProcess
from pngcheck import png_pixels

from exporter.accounting.snapshot import (
    CollectorSnapshot,
    ConfigReloadSnapshot,
    DeviceSnapshot,
    ProcessSnapshot,
    Snapshot,
)
from exporter.context.model import HostIdentity, Owner, PriceQuote
from exporter.readings import DeviceIdentity
from exporter.web import landing
from exporter.web.landing import LandingPage, LandingSettings, host_rates, render_landing

HOSTILE = '"><script>alert(1)</script>'


def device(name: str = "nvidia0", **changes: Any) -> DeviceSnapshot:
    base = DeviceSnapshot(
        identity=DeviceIdentity(name, f"GPU-{name}", "nvidia", "NVIDIA A100-SXM4-40GB", "gpu"),
        up=True,
        utilization=0.2,
        busy_seconds_total=0.0,
        has_busy=True,
        memory_used_bytes=None,
        memory_total_bytes=None,
        power_watts=None,
        energy_joules_total=None,
        process_count=0,
        processes=(),
        state="active",
        state_seconds=(),
        idle_seconds=0.0,
        price_per_hour=4.0,
        owner=Owner(team="ml-research", workload="training"),
        cost=(),
        idle_cost=(),
        waste=(),
        counters=(),
    )
    return replace(base, **changes)


def snapshot(*devices: DeviceSnapshot, **changes: Any) -> Snapshot:
    base = Snapshot(
        version=1,
        devices=devices,
        identity=HostIdentity(provider="aws", instance_type="p4d.24xlarge", instance_id="i-1", source="demo"),
        price=PriceQuote(dollars_per_hour=32.0, source="builtin", as_of="2026-07-20"),
        collectors=(CollectorSnapshot("nvml", True, 0.004, 1_700_000_000.0),),
        errors=(),
        label_overflow=(),
        build_version="0.1.0",
        config_reload=ConfigReloadSnapshot(True, 1_700_000_000.0),
    )
    return replace(base, **changes)


def text_of(page: str) -> str:
    """The page's visible text, tags dropped, entities left as they are."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", page))


def test_host_rates_price_idle_and_waste() -> None:
    devices = (
        device("nvidia0", utilization=0.0, state="idle_free", price_per_hour=4.0),
        device("nvidia1", utilization=0.4, price_per_hour=4.0),  # half the 0.8 target: half its price wasted
        device("nvidia2", utilization=1.0, price_per_hour=4.0),  # above target: no waste
        device("nvidia3", utilization=None, state="idle_held", price_per_hour=2.0),  # unknown: no waste
    )
    rates = host_rates(devices, 0.8)
    assert rates.price_per_hour == pytest.approx(14.0)
    assert rates.idle_per_hour == pytest.approx(6.0)
    assert rates.waste_per_hour == pytest.approx(4.0 + 2.0)


def test_page_shows_host_devices_rates_collectors_and_reload() -> None:
    page = render_landing(
        snapshot(
            device("nvidia0", utilization=0.0, state="idle_held", idle_seconds=3 * 86400 + 7200),
            device("nvidia1", utilization=0.55),
            collectors=(
                CollectorSnapshot("nvml", True, 0.004, 1_700_000_000.0),
                CollectorSnapshot("context", False, 1.5, None),
            ),
        ),
        LandingSettings(telemetry_path="/stats"),
    )
    text = text_of(page)
    assert "p4d.24xlarge" in text and "i-1" in text
    assert "$32.00/h" in text and "builtin, as of 2026-07-20" in text
    assert "idle_held" in text and "3d 2h" in text and "55%" in text
    assert "Idle $4.00/h" in text  # only nvidia0 is idle
    assert "Waste $5.25/h" in text  # 4 x (0.8 - 0)/0.8 + 4 x (0.8 - 0.55)/0.8
    assert "nvml ok" in text and "context failing" in text and "never" in text
    assert "2023-11-14 22:13:20 UTC" in text  # the collector's last success and the config load
    assert 'href="/stats"' in page and "docs/runbook.md" in page and "/tree/main/grafana" in page
    assert "<script" not in page.lower()


def test_hostile_label_values_are_escaped() -> None:
    bad = device(
        owner=Owner(team=HOSTILE, workload="x'y&z"),
        process_count=1,
        processes=(ProcessSnapshot(7, "eve<i>", f"python {HOSTILE}\nrm", Owner(team=HOSTILE), 1, None),),
    )
    page = render_landing(
        snapshot(bad, identity=HostIdentity(tags=(("Team", HOSTILE),), instance_type=HOSTILE)), LandingSettings()
    )
    assert "<script" not in page.lower() and "<i>" not in page and "eve&lt;i&gt;" in page
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&#x27;y&amp;z" in page


def test_host_without_price_says_no_price() -> None:
    page = render_landing(snapshot(device(price_per_hour=None), price=PriceQuote()), LandingSettings())
    text = text_of(page)
    assert "Instance price no price" in text and "Price from none" in text
    assert "Accelerators no price" in text and "Waste no price" in text


def test_fully_sliced_mig_parent_neuron_cores_and_no_devices() -> None:
    parent = device(
        "nvidia5",
        identity=DeviceIdentity("nvidia5", "GPU-5", "nvidia", "A100", "gpu", price_units=0.0, mig_parent=True),
        state="",
        price_per_hour=None,
        utilization=None,
    )
    mig = device("nvidia5-mig1", identity=DeviceIdentity("nvidia5-mig1", "MIG-1", "nvidia", "A100 3g", "mig"))
    core = device("neuroncore0", identity=DeviceIdentity("neuroncore0", "nc0", "aws", "Trainium", "neuroncore"))
    text = text_of(render_landing(snapshot(parent, mig, core), LandingSettings()))
    assert "sliced (its MIG instances carry state and price)" in text
    assert "(mig)" in text and "neuroncore0 (neuroncore)" in text
    assert "Accelerators $8.00/h" in text  # the parent adds nothing
    empty = text_of(render_landing(snapshot(), LandingSettings()))
    assert "No accelerators found on this host." in empty and "Accelerators no priced device" in empty
    assert "first poll has not finished" in render_landing(None, LandingSettings())


def test_linked_docs_and_dashboards_exist_in_the_repository() -> None:
    root = ROOT
    assert all((root / path).is_file() for _, path in landing.DOCS)
    assert any((root / landing.DASHBOARDS_PATH).glob("*.json"))
    alerts = (root / "alerts" / "accel-cost.alerts.yml").read_text()
    assert f"{landing.REPOSITORY_URL}/blob/main/docs/runbook.md" in alerts  # the same repository as the runbooks


def test_failed_config_reload_is_shown() -> None:
    page = render_landing(snapshot(config_reload=ConfigReloadSnapshot(False, None)), LandingSettings())
    assert "the last reload failed" in page and "last success never" in page


def test_rendered_once_per_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = landing.render_landing

    def counting(*args: Any) -> str:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(landing, "render_landing", counting)
    latest = [snapshot(device())]
    settings = [LandingSettings()]
    page = LandingPage(lambda: latest[0], lambda: settings[0])
    first = page.body()
    assert all(page.body() is first for _ in range(50)) and len(calls) == 1
    latest[0] = replace(latest[0], version=2)
    page.body()
    settings[0] = LandingSettings(target_utilization=0.5)  # a config reload changes the waste figure
    page.body()
    assert len(calls) == 3


# --- the real exporter in headless Chromium -------------------------------------------------------

SCENARIO = """
name: hostile
description: one GPU held by a process whose command and team are hostile
host:
  provider: aws
  instance_type: p4d.24xlarge
  instance_id: i-0123456789abcdef0
  region: us-east-1
  zone: us-east-1a
  tags: {Team: ml-platform}
driver_version: "550.54.15"
gpus:
  - {index: 0, model: NVIDIA A100-SXM4-40GB, memory_total: 40GiB, utilization: 0}
  - {index: 1, model: NVIDIA A100-SXM4-40GB, memory_total: 40GiB, utilization: {constant: 0.5}}
processes:
  - pid: 4242
    device: "0"
    memory: 10GiB
    user: mallory
    command: "python x.py '\\"><script>alert(1)</script>\\nsecond line"
    started: -600
"""
CONFIG = """
attribution:
  rules:
    - {match: {user: mallory}, team: "\\"><script>alert(2)</script>\\nnext", workload: owned}
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium (.ci/run does)")
    return found


def run_chromium(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A profile of its own per run; without a display Chromium would try the GPU and D-Bus first.
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def hostile_exporter(tmp_path: Path, run_exporter: Callable[..., ExporterProcess]) -> ExporterProcess:
    (tmp_path / "hostile.yaml").write_text(SCENARIO)
    (tmp_path / "config.yaml").write_text(CONFIG)
    exporter = run_exporter(["--demo", str(tmp_path / "hostile.yaml"), "--config.file", str(tmp_path / "config.yaml")])
    assert "mallory" in exporter.get("/").text  # the first poll is in the page
    return exporter


@pytest.mark.slow
def test_chromium_renders_a_page_that_is_not_blank(tmp_path: Path, hostile_exporter: ExporterProcess) -> None:
    browser = chromium()
    shot = tmp_path / "landing.png"
    result = run_chromium(
        browser, tmp_path, f"--screenshot={shot}", "--window-size=800,600", hostile_exporter.url + "/"
    )
    assert shot.exists(), result.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (800, 600)
    bpp = len(rows[0]) // width
    pixels = [row[x : x + 3] for row in rows for x in range(0, len(row), bpp)]
    background = max(set(pixels[::97]), key=pixels[::97].count)
    inked = sum(1 for p in pixels if p != background)
    assert inked > 0.02 * len(pixels), f"only {inked} of {len(pixels)} pixels differ from the background"
    assert len(set(pixels)) > 10  # text, table shading and coloured states, not one flat colour


@pytest.mark.slow
def test_chromium_dom_has_hostile_values_as_text_and_no_script(
    tmp_path: Path, hostile_exporter: ExporterProcess
) -> None:
    browser = chromium()
    result = run_chromium(browser, tmp_path, "--dump-dom", hostile_exporter.url + "/")
    dom = result.stdout
    assert "mallory" in dom, result.stderr[-2000:]
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the command, shown as text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in dom  # the team, shown as text
    assert "second line" in dom


def test_grid_intensity_and_its_source_are_shown() -> None:
    scheduled = text_of(render_landing(snapshot(device(), grid_intensity=(412.5, "schedule")), LandingSettings()))
    assert "Grid intensity 412.5 g CO2e/kWh (from schedule)" in scheduled
    unknown = text_of(render_landing(snapshot(device()), LandingSettings()))
    assert "Grid intensity unknown: no carbon series" in unknown
