"""The PromQL the report runs: every query aggregates on the server, per device or per host,
one value per series over the whole range (except the per-host utilization timeline).

Money always comes from the counters with increase() (counter resets handled), never from gauges.
Utilization is busy seconds over observed seconds (the sum of the state counters), so it is exact
at any scrape interval; "hourly" figures use 1 h windows, which hold at least two samples for
scrape intervals up to 30 min.
"""

from __future__ import annotations

from dataclasses import dataclass

HOUR = 3600.0
# Recording rule of the bundle (alerts/accel-cost.rules.yml): used for the timeline when present.
RULE_HOST_UTILIZATION = "instance:accel_utilization:ratio_rate5m"


def prom_duration(seconds: float) -> str:
    """Seconds as a PromQL duration (whole seconds)."""
    return f"{max(1, round(seconds))}s"


@dataclass(frozen=True)
class Queries:
    """The report's queries for one selector and range."""

    selector: str
    range_seconds: float

    def _m(self, metric: str) -> str:
        return f"{metric}{{{self.selector}}}"

    @property
    def _r(self) -> str:
        return prom_duration(self.range_seconds)

    def money(self, counter: str) -> str:
        """Dollars per device and team over the range from one money counter."""
        return f"sum by (instance, device, team, workload) (increase({self._m(counter)}[{self._r}]))"

    def state_seconds(self) -> str:
        """Seconds per device and state over the range."""
        return f"sum by (instance, device, state) (increase({self._m('accel_state_seconds_total')}[{self._r}]))"

    def busy_seconds(self) -> str:
        """Busy seconds per device over the range."""
        return f"sum by (instance, device) (increase({self._m('accel_busy_seconds_total')}[{self._r}]))"

    def busiest_hour(self) -> str:
        """Per device, the highest utilization of any hour of the range."""
        inner = f"rate({self._m('accel_busy_seconds_total')}[1h])"
        return f"max by (instance, device) (max_over_time({inner}[{self._r}:1h]))"

    def host_busy_p95(self) -> str:
        """Per host, the 95th percentile over the range's hours of busy device-equivalents."""
        inner = f"sum by (instance) (rate({self._m('accel_busy_seconds_total')}[1h]))"
        return f"quantile_over_time(0.95, ({inner})[{self._r}:1h])"

    def memory_peak(self) -> str:
        """Per device, the highest memory in use over the range."""
        return f"max by (instance, device) (max_over_time({self._m('accel_memory_used_bytes')}[{self._r}]))"

    def device_info(self) -> str:
        """Per device, its model."""
        return f"max by (instance, device, model) (last_over_time({self._m('accel_device_info')}[{self._r}]))"

    def device_price(self) -> str:
        """Per device, its last hourly price."""
        return f"max by (instance, device) (last_over_time({self._m('accel_price_dollars_per_hour')}[{self._r}]))"

    def instance_info(self) -> str:
        """Per host, its identity and where its price came from."""
        labels = "instance, instance_type, instance_id, provider, region, price_source"
        return f"max by ({labels}) (last_over_time({self._m('accel_instance_info')}[{self._r}]))"

    def instance_price(self) -> str:
        """Per host, its last whole-instance hourly price."""
        return f"max by (instance) (last_over_time({self._m('accel_instance_price_dollars_per_hour')}[{self._r}]))"

    def oldest_process(self) -> str:
        """Per device, the start time of the oldest process holding it at the end of the range."""
        return f"min by (instance, device) (last_over_time({self._m('accel_process_start_time_seconds')}[1h]))"

    def idle_seconds(self) -> str:
        """Per device, seconds since it was last active, at the end of the range."""
        return f"max by (instance, device) (last_over_time({self._m('accel_idle_seconds')}[1h]))"

    def rules_present(self) -> str:
        """How many hosts have the bundle's utilization recording rule in the range."""
        return f"count(last_over_time({RULE_HOST_UTILIZATION}{{{self.selector}}}[{self._r}]))"

    def host_utilization(self, window: float, use_rule: bool) -> str:
        """Per host, utilization over the `window` before each step (for the timeline and gaps)."""
        w = prom_duration(window)
        if use_rule:
            return f"avg by (instance) (avg_over_time({RULE_HOST_UTILIZATION}{{{self.selector}}}[{w}]))"
        busy = f"sum by (instance) (increase({self._m('accel_busy_seconds_total')}[{w}]))"
        seen = f"sum by (instance) (increase({self._m('accel_state_seconds_total')}[{w}]))"
        return f"{busy} / ({seen} > 0)"
