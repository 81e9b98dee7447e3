"""The `/` landing page: what this exporter sees right now, as plain server-rendered HTML.

`render_landing` is a pure function of the latest snapshot and a few settings; `LandingPage`
renders it at most once per snapshot and serves the cached bytes to every visitor, as the
metrics path does. Every value from the host (tags, team names, commands, collector names) is
HTML-escaped: a team called `"><script>` must show as text, never run. No JavaScript, no
external resources: the page works on a host without internet access and under a strict CSP.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from exporter import __version__
from exporter.accounting.snapshot import DeviceSnapshot, Snapshot
from exporter.accounting.states import ACTIVE, IDLE_STATES, NO_STATE

# The repository the alerts' runbook_url annotations point at; docs and dashboards live there.
REPOSITORY_URL = "https://github.com/accel-cost-exporter/accel-cost-exporter"
DOCS = (
    ("Metrics reference", "docs/metrics.md"),
    ("Alerts", "docs/alerts.md"),
    ("Runbook", "docs/runbook.md"),
    ("Dashboards", "docs/dashboards.md"),
    ("Pricing", "docs/pricing.md"),
)
DASHBOARDS_PATH = "grafana"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#1d2430;background:#fff;max-width:80em}
h1{font-size:1.6em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #d6dbe3}
table{border-collapse:collapse;margin:.3em 0}th,td{padding:.25em .7em;text-align:left;border-bottom:1px solid #e6e9ef}
th{background:#eef1f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.active{color:#17713a;font-weight:600}.idle_held{color:#b3261e;font-weight:600}.idle_free{color:#a15c00;font-weight:600}
.ok{color:#17713a}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7280}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d6dbe3;border-radius:6px;padding:.6em 1em;min-width:12em}
nav ul{list-style:none;padding:0;display:flex;gap:.4em 1.2em;flex-wrap:wrap}
.card b{display:block;font-size:1.5em}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#6b7280}
"""


@dataclass(frozen=True)
class LandingSettings:
    """What the page needs besides the snapshot."""

    telemetry_path: str = "/metrics"
    target_utilization: float = 0.8  # accounting.target_utilization, for the waste rate
    repository_url: str = REPOSITORY_URL


@dataclass(frozen=True)
class HostRates:
    """The host's money rates in $/h right now; None when no device has a price."""

    price_per_hour: float | None
    idle_per_hour: float | None
    waste_per_hour: float | None


def host_rates(devices: Iterable[DeviceSnapshot], target_utilization: float) -> HostRates:
    """Sum the priced devices' rates: all of it, the part in an idle state, and the waste rate.

    The waste rate is price × max(0, target − utilization) / target per device, as the waste
    counter integrates it (on utilization; with `waste_basis: sm` the counter uses SM activity).
    A device whose utilization is unknown this interval adds to the price but not to the waste.
    """
    priced = [d for d in devices if d.price_per_hour is not None and d.state != NO_STATE]
    if not priced:
        return HostRates(None, None, None)
    price = idle = waste = 0.0
    for device in priced:
        rate = device.price_per_hour or 0.0
        price += rate
        if device.state in IDLE_STATES:
            idle += rate
        if device.utilization is not None and target_utilization > 0:
            waste += rate * max(0.0, target_utilization - device.utilization) / target_utilization
    return HostRates(price, idle, waste)


def render_landing(snapshot: Snapshot | None, settings: LandingSettings) -> str:
    """The whole page as HTML; `snapshot` None means the first poll has not finished."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>accel-cost-exporter</title>',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>accel-cost-exporter</h1>",
        "<p>Live accelerator cost, idle spend and waste for Prometheus.</p>",
        _links(settings),
    ]
    if snapshot is None:
        parts.append('<p class="bad">No data yet: the first poll has not finished. Reload in a few seconds.</p>')
    else:
        parts += [
            _host(snapshot),
            _rates(snapshot, settings),
            _devices(snapshot.devices),
            _collectors(snapshot),
            _config_reload(snapshot),
        ]
    version = snapshot.build_version if snapshot is not None else __version__
    parts.append(f'<p class="muted">Version {_e(version)}.</p></body></html>')
    return "\n".join(parts)


class LandingPage:
    """Serves `render_landing` of the latest snapshot, rendered at most once per snapshot and settings."""

    def __init__(
        self,
        latest: Callable[[], Snapshot | None],
        settings: Callable[[], LandingSettings] = LandingSettings,
    ) -> None:
        self._latest = latest
        self._settings = settings
        self._lock = threading.Lock()
        self._key: tuple[int, LandingSettings] | None = None
        self._body = b""

    def body(self) -> bytes:
        """The page's UTF-8 bytes for the latest snapshot."""
        snapshot = self._latest()
        settings = self._settings()
        key = (snapshot.version if snapshot is not None else -1, settings)
        with self._lock:
            if key != self._key:
                self._body = render_landing(snapshot, settings).encode("utf-8")
                self._key = key
            return self._body


# --- sections -----------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _money(value: float | None) -> str:
    return "no price" if value is None else f"${value:,.2f}/h"


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _links(settings: LandingSettings) -> str:
    repo = settings.repository_url.rstrip("/")
    docs = "".join(f'<li><a href="{_e(f"{repo}/blob/main/{path}")}">{_e(name)}</a></li>' for name, path in DOCS)
    return (
        f'<nav><ul><li><a href="{_e(settings.telemetry_path)}">Metrics</a></li>'
        '<li><a href="/-/healthy">Health</a></li><li><a href="/-/ready">Readiness</a></li>'
        f'{docs}<li><a href="{_e(f"{repo}/tree/main/{DASHBOARDS_PATH}")}">Grafana dashboards</a></li></ul></nav>'
    )


def _host(snapshot: Snapshot) -> str:
    identity, price = snapshot.identity, snapshot.price
    if price.known:
        quote = f"{_money(price.dollars_per_hour)} ({_e(price.lifecycle)})"
        origin = _e(price.source) + (f", as of {_e(price.as_of)}" if price.as_of else "")
        if price.cached:
            origin += ", read from the price cache"
    else:
        quote = "no price"
        origin = "none: no configured, live or built-in price for this instance type, so no money series"
    rows = (
        ("Provider", _e(identity.provider)),
        ("Instance type", _e(identity.instance_type or "unknown")),
        ("Instance", _e(identity.instance_id or "unknown")),
        ("Region / zone", f"{_e(identity.region or '-')} / {_e(identity.zone or '-')}"),
        ("Lifecycle", _e(identity.lifecycle)),
        ("Identity from", _e(identity.source)),
        ("Instance price", quote),
        ("Price from", origin),
        ("Grid intensity", _intensity(snapshot.grid_intensity)),
        ("Tags", ", ".join(f"{_e(k)}={_e(v)}" for k, v in identity.tags) or "none"),
    )
    return "<h2>Host</h2><dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows) + "</dl>"


def _intensity(in_force: tuple[float, str] | None) -> str:
    """The grid intensity carbon is charged at now, and where it came from (a schedule past its end says so)."""
    if in_force is None:
        return "unknown: no carbon series (set carbon.grid_intensity or carbon.schedule_file)"
    grams, source = in_force
    return f"{grams:,.1f} g CO2e/kWh (from {_e(source)})"


def _rates(snapshot: Snapshot, settings: LandingSettings) -> str:
    rates = host_rates(snapshot.devices, settings.target_utilization)
    target = f"{settings.target_utilization:.0%}"
    cards = (
        ("Accelerators", rates.price_per_hour, "the price of every priced device, per hour"),
        ("Idle", rates.idle_per_hour, "the price of the devices idle right now (idle_held or idle_free)"),
        (
            "Waste",
            rates.waste_per_hour,
            f"price × max(0, {target} − utilization) / {target} over the last poll: "
            f"what falls short of the {target} target",
        ),
    )
    # A priced host whose devices carry no price yet (none found, or all fully sliced) is not unpriced.
    unknown = "no priced device" if snapshot.price.known else "no price"
    body = "".join(
        f'<div class="card">{name}<b>{unknown if value is None else _money(value)}</b>'
        f'<span class="muted">{_e(meaning)}</span></div>'
        for name, value, meaning in cards
    )
    return f'<h2>Cost rate</h2><div class="cards">{body}</div>'


def _devices(devices: tuple[DeviceSnapshot, ...]) -> str:
    if not devices:
        return "<h2>Devices</h2><p>No accelerators found on this host.</p>"
    head = (
        "<tr><th>Device</th><th>Model</th><th>State</th><th>Team</th><th>Workload</th><th>$/h</th>"
        "<th>Utilization</th><th>Idle for</th><th>Processes</th></tr>"
    )
    return f"<h2>Devices</h2><table>{head}{''.join(_device_row(d) for d in devices)}</table>"


def _device_row(device: DeviceSnapshot) -> str:
    identity = device.identity
    if not device.up:
        state = '<span class="bad">down</span>'
    elif device.state == NO_STATE:
        state = '<span class="muted">sliced (its MIG instances carry state and price)</span>'
    else:
        state = f'<span class="{_e(device.state)}">{_e(device.state)}</span>'
    price = "-" if device.state == NO_STATE else _money(device.price_per_hour)
    utilization = "-" if device.utilization is None else f"{device.utilization:.0%}"
    idle_for = "-" if device.state in (NO_STATE, ACTIVE) else _duration(device.idle_seconds)
    top = max(device.processes, key=lambda p: p.memory_bytes or 0, default=None)
    held = f"{device.process_count}" + (f": {_e(top.command)} ({_e(top.user)})" if top is not None else "")
    if top is not None and top.owner.slurm_job_id:
        held += f", Slurm job {_e(top.owner.slurm_job_id)}"
    name = _e(identity.device) + (
        f' <span class="muted">({_e(identity.kind)})</span>' if identity.kind != "gpu" else ""
    )
    cells = (
        (name, ""),
        (_e(identity.model), ""),
        (state, ""),
        (_e(device.owner.team), ""),
        (_e(device.owner.workload or "-"), ""),
        (price, "n"),
        (utilization, "n"),
        (idle_for, "n"),
        (held, ""),
    )
    return (
        "<tr>"
        + "".join(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>" for text, cls in cells)
        + "</tr>"
    )


def _collectors(snapshot: Snapshot) -> str:
    if not snapshot.collectors:
        return "<h2>Collectors</h2><p>No collector has reported yet.</p>"
    rows = "".join(
        f"<tr><td>{_e(c.name)}</td>"
        f'<td class="{"ok" if c.success else "bad"}">{"ok" if c.success else "failing"}</td>'
        f'<td class="n">{c.duration_seconds * 1000:.1f} ms</td><td>{_utc(c.last_sample_timestamp)}</td></tr>'
        for c in snapshot.collectors
    )
    return (
        "<h2>Collectors</h2><table><tr><th>Collector</th><th>Last poll</th><th>Duration</th>"
        f"<th>Last success</th></tr>{rows}</table>"
    )


def _config_reload(snapshot: Snapshot) -> str:
    reload = snapshot.config_reload
    if reload is None:
        text = '<span class="muted">not recorded yet</span>'
    elif reload.successful:
        text = f'<span class="ok">loaded</span>, last success {_utc(reload.last_success_timestamp)}'
    else:
        text = (
            '<span class="bad">the last reload failed</span>: the previous configuration stays in force '
            f"(last success {_utc(reload.last_success_timestamp)}); the exporter's log names each bad key"
        )
    return f"<h2>Configuration</h2><p>{text}</p>"
