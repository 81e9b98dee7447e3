"""Price resolution: config, then AWS live prices (or a fresh cached one), then the built-in table, then none.

Each step is logged at debug; the outcome at info when it changes. A live lookup runs in a worker
thread and is waited for at most `pricing.aws.timeout`; an answer that arrives later is not lost:
the next refresh picks it up (`late_answer_ready`). A live price may be up to `STALE_LIVE_SECONDS`
old before the built-in table is preferred over it, so one failed daily refresh never downgrades
a host to a stale table price.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from exporter.clock import Clock
from exporter.config.model import CarbonSettings, PricingSettings
from exporter.config.owned import amortized_per_hour
from exporter.context.errors import ErrorCounts, LogOnce
from exporter.context.model import CarbonQuote, HostIdentity, PriceQuote
from exporter.context.price.aws_api import AwsApi, AwsLookupError, live_pricing_available
from exporter.context.price.builtin_prices import builtin_table, opencost_accelerator_share
from exporter.context.price.carbon_table import grid_intensity
from exporter.context.price.price_cache import CachedPrice, PriceCache, cache_key
from exporter.context.threads import run_in_thread

log = logging.getLogger(__name__)

COLLECTOR = "price"
STALE_LIVE_SECONDS = 7 * 86400.0
SOURCE_CONFIG = "config"
SOURCE_ON_DEMAND = "aws-pricing-api"
SOURCE_SPOT = "aws-spot"
SOURCE_BUILTIN = "builtin"
SOURCE_NONE = "none"
SOURCE_OWNED = "owned"
# Lifecycles with a public hourly list price; the others (reserved, savings-plan, capacity-block,
# anything new) need a configured effective rate.
PRICED_LIFECYCLES = ("on-demand", "spot")
_BUILTIN_PROVIDERS = ("aws", "unknown", "static")


def day(unix_time: float) -> str:
    """YYYY-MM-DD (UTC) of a Unix time."""
    return datetime.fromtimestamp(unix_time, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass
class LiveResult:
    """What one worker-thread lookup produced: a quote or the reasons it failed."""

    key: str
    quote: PriceQuote | None
    failures: list[tuple[str, str]] = field(default_factory=list)


class PriceResolver:
    """Resolves a PriceQuote for a host identity; see the module docstring for the order."""

    def __init__(
        self,
        settings: PricingSettings,
        clock: Clock,
        errors: ErrorCounts,
        cache: PriceCache,
        live: bool = True,
        api: AwsApi | None = None,
        carbon: CarbonSettings | None = None,
    ) -> None:
        self._settings = settings
        self._carbon = carbon or CarbonSettings()
        self._clock = clock
        self._errors = errors
        self._cache = cache
        for reason in cache.load_problems:  # already logged by the cache, once per load
            errors.add(COLLECTOR, reason)
        self._live = live and settings.aws_enabled
        self._api = api or AwsApi(settings.aws_timeout_seconds, settings.aws_endpoint_url)
        self._table = builtin_table()
        self._once = LogOnce(log)
        self._pending: asyncio.Future[LiveResult] | None = None
        self.last_live_failed = False

    # --- the chain ------------------------------------------------------------------------------

    def lifecycle(self, identity: HostIdentity) -> str:
        """The capacity type to price: pricing.lifecycle overrides what metadata said."""
        return self._settings.lifecycle or identity.lifecycle or "on-demand"

    def refresh_interval(self, identity: HostIdentity) -> float:
        """How long a live price stays fresh: spot prices move, list prices change rarely."""
        spot = self.lifecycle(identity) == "spot"
        return self._settings.spot_refresh_seconds if spot else self._settings.refresh_seconds

    def _quote(
        self,
        identity: HostIdentity,
        price: float | None,
        source: str,
        *,
        as_of: str = "",
        lifecycle: str = "on-demand",
        fetched_at: float | None = None,
        cached: bool = False,
    ) -> PriceQuote:
        return PriceQuote(
            dollars_per_hour=price,
            source=source,
            as_of=as_of,
            device_model_prices=self._settings.device_models,
            lifecycle=lifecycle,
            accelerator_share=self._share(identity) if price is not None else 1.0,
            fetched_at=fetched_at,
            cached=cached,
            carbon=self._carbon_quote(identity, 1.0),
        )

    def _carbon_quote(self, identity: HostIdentity, owned_pue: float) -> CarbonQuote | None:
        """Grid intensity (schedule, else fixed) with the PUE (carbon.pue, else the owned facility's, else 1);
        None when nothing is known."""
        fixed = grid_intensity(self._carbon, identity.region)
        pue = self._carbon.pue if self._carbon.pue is not None else owned_pue
        quote = CarbonQuote(
            fixed.grams_per_kwh if fixed else None, fixed.source if fixed else "", pue, self._carbon.schedule
        )
        return quote if quote.known else None

    def _owned(self, identity: HostIdentity) -> PriceQuote | None:
        """Owned hardware: the host's amortization (split over its accelerators like an instance
        price), per-model prices, overhead per device-hour, electricity at tariff x PUE."""
        owned = self._settings.owned
        if owned is None:
            return None
        host = owned.host
        configured = dict(self._settings.device_models)
        for model, hardware in owned.device_models:
            configured.setdefault(model, amortized_per_hour(hardware) + hardware.overhead_per_device_hour)
        return PriceQuote(
            dollars_per_hour=amortized_per_hour(host) if host is not None else None,
            source=SOURCE_OWNED,
            device_model_prices=tuple(sorted(configured.items())),
            lifecycle=self.lifecycle(identity),
            device_overhead_per_hour=host.overhead_per_device_hour if host is not None else 0.0,
            energy_dollars_per_kwh=owned.electricity_dollars_per_kwh * owned.pue,
            carbon=self._carbon_quote(identity, owned.pue),
        )

    def _share(self, identity: HostIdentity) -> float:
        if self._settings.split != "opencost":
            return 1.0
        share = opencost_accelerator_share(identity.instance_type, self._table)
        if share is None:
            self._once.log(
                f"share:{identity.instance_type}",
                logging.WARNING,
                "pricing.split=opencost: no vCPU/memory shape for %r in the built-in table; splitting the whole "
                "instance price evenly instead",
                identity.instance_type,
            )
            return 1.0
        return share

    def _config(self, identity: HostIdentity) -> PriceQuote | None:
        configured = dict(self._settings.instance_types)
        if identity.instance_type and identity.instance_type in configured:
            log.debug("price for %s from config", identity.instance_type)
            return self._quote(
                identity, configured[identity.instance_type], SOURCE_CONFIG, lifecycle=self.lifecycle(identity)
            )
        return None

    def _live_applicable(self, identity: HostIdentity) -> bool:
        return (
            self._live
            and identity.provider == "aws"
            and bool(identity.instance_type)
            and live_pricing_available(identity.region)
        )

    def _keys(self, identity: HostIdentity) -> list[tuple[str, float]]:
        """Cache keys worth trying, best first, with the age under which each counts as fresh."""
        lifecycle = self.lifecycle(identity)
        keys: list[tuple[str, float]] = []
        if lifecycle == "spot" and identity.zone:
            spot = cache_key("aws", identity.instance_type, identity.region, "spot", identity.zone)
            keys.append((spot, self._settings.spot_refresh_seconds))
        on_demand = cache_key("aws", identity.instance_type, identity.region, "on-demand")
        keys.append((on_demand, self._settings.refresh_seconds))
        return keys

    def _from_cache(self, identity: HostIdentity, max_age: float | None) -> PriceQuote | None:
        """A cached live price younger than its refresh interval (or `max_age` when given)."""
        now = self._clock.time()
        for key, fresh_for in self._keys(identity):
            entry = self._cache.get(key)
            limit = fresh_for if max_age is None else max_age
            if entry is not None and 0 <= now - entry.fetched_at < limit:
                return self._quote(
                    identity,
                    entry.dollars_per_hour,
                    entry.source,
                    as_of=day(entry.fetched_at),
                    lifecycle=entry.lifecycle,
                    fetched_at=entry.fetched_at,
                    cached=True,
                )
        return None

    def _builtin(self, identity: HostIdentity) -> PriceQuote | None:
        if identity.provider not in _BUILTIN_PROVIDERS or identity.region.startswith("cn-"):
            return None
        price = self._table.prices.get(identity.instance_type)
        if price is None:
            return None
        if identity.region and identity.region != self._table.region:
            self._once.log(
                f"region:{identity.region}",
                logging.INFO,
                "built-in prices are %s list prices; this host is in %s, where prices differ. "
                "Set pricing.instance_types or allow pricing:GetProducts for the exact price.",
                self._table.region,
                identity.region,
            )
        return self._quote(identity, price, SOURCE_BUILTIN, as_of=self._table.as_of)

    def _none(self, identity: HostIdentity) -> PriceQuote:
        if identity.instance_type:
            self._once.log(
                f"none:{identity.provider}:{identity.instance_type}",
                logging.WARNING,
                "no price known for %s %s; set pricing.instance_types (or pricing.device_models) in the config",
                identity.provider,
                identity.instance_type,
            )
        source = SOURCE_CONFIG if self._settings.device_models else SOURCE_NONE
        return self._quote(identity, None, source)

    def resolve_offline(self, identity: HostIdentity) -> PriceQuote:
        """The chain without network calls: config, a fresh cached live price, built-in, none."""
        return (
            self._config(identity)
            or self._owned(identity)
            or (self._from_cache(identity, None) if self._live_applicable(identity) else None)
            or self._builtin(identity)
            or self._none(identity)
        )

    async def resolve(self, identity: HostIdentity) -> PriceQuote:
        """The full chain; waits at most `pricing.aws.timeout` for AWS."""
        self.last_live_failed = False
        configured = self._config(identity) or self._owned(identity)
        if configured is not None:
            return configured
        self._warn_lifecycle(identity)
        if self._live_applicable(identity):
            fresh = self._from_cache(identity, None)
            if fresh is not None:
                log.debug("price for %s from the cache (fetched %s)", identity.instance_type, fresh.as_of)
                return fresh
            quote = await self._live_lookup(identity)
            if quote is not None:
                return quote
            stale = self._from_cache(identity, STALE_LIVE_SECONDS)
            if stale is not None:
                log.info("AWS price lookup failed; keeping the live price fetched on %s", stale.as_of)
                return stale
        return self._builtin(identity) or self._none(identity)

    def _warn_lifecycle(self, identity: HostIdentity) -> None:
        lifecycle = self.lifecycle(identity)
        if lifecycle not in PRICED_LIFECYCLES:
            self._once.log(
                f"lifecycle:{lifecycle}",
                logging.WARNING,
                "lifecycle %r has no public hourly price; using the on-demand list price as an upper bound. "
                "Set pricing.instance_types to the effective rate.",
                lifecycle,
            )

    # --- live lookups ---------------------------------------------------------------------------

    @property
    def late_answer_ready(self) -> bool:
        """A lookup that outlived its wait has finished: resolving again will use its answer."""
        return self._pending is not None and self._pending.done()

    async def _live_lookup(self, identity: HostIdentity) -> PriceQuote | None:
        key = "|".join(k for k, _ in self._keys(identity))
        if self._pending is not None:
            if not self._pending.done():
                log.debug("an AWS price lookup is still running; not starting another")
                self.last_live_failed = True
                return None
            pending, self._pending = self._pending, None
            if pending.result().key == key:
                return self._collect(pending.result())
        future = run_in_thread("aws-price", lambda: self._lookup_blocking(identity, key))
        done, _ = await asyncio.wait({future}, timeout=self._settings.aws_timeout_seconds)
        if not done:
            self._pending = future
            self._errors.add(COLLECTOR, "timeout")
            self._once.log(
                "timeout",
                logging.WARNING,
                "AWS price lookup took longer than %gs; using the next source for now",
                self._settings.aws_timeout_seconds,
            )
            self.last_live_failed = True
            return None
        return self._collect(future.result())

    def _collect(self, result: LiveResult) -> PriceQuote | None:
        for reason, message in result.failures:
            self._errors.add(COLLECTOR, reason)
            self._once.log(f"aws:{reason}", logging.WARNING, "AWS price lookup: %s", message)
        self.last_live_failed = result.quote is None
        if result.quote is not None:
            for reason in ("no_credentials", "access_denied", "throttled", "timeout"):
                self._once.forget(f"aws:{reason}")
        return result.quote

    def _lookup_blocking(self, identity: HostIdentity, key: str) -> LiveResult:
        """Runs in a worker thread: spot price when the host is spot, else (or on failure) on-demand."""
        result = LiveResult(key=key, quote=None)
        try:
            now = self._clock.time()
            if self.lifecycle(identity) == "spot" and identity.zone:
                try:
                    when = datetime.fromtimestamp(now, tz=timezone.utc)
                    price = self._api.spot_price(identity.instance_type, identity.zone, identity.region, when)
                    result.quote = self._store(identity, price, SOURCE_SPOT, "spot", now)
                    return result
                except AwsLookupError as exc:
                    # Fall back to the on-demand list price: an upper bound, and a different IAM action.
                    result.failures.append((exc.reason, f"spot price: {exc}"))
            price = self._api.on_demand_price(identity.instance_type, identity.region)
            result.quote = self._store(identity, price, SOURCE_ON_DEMAND, "on-demand", now)
        except AwsLookupError as exc:
            result.failures.append((exc.reason, f"on-demand price: {exc}"))
        except Exception as exc:  # a bug here must not kill the worker silently
            result.failures.append(("internal", f"{exc.__class__.__name__}: {exc}"))
        return result

    def _store(self, identity: HostIdentity, price: float, source: str, lifecycle: str, now: float) -> PriceQuote:
        key = cache_key("aws", identity.instance_type, identity.region, lifecycle, identity.zone)
        if not self._cache.put(key, CachedPrice(price, source, lifecycle, now)):
            self._errors.add(COLLECTOR, "cache_write")
        return self._quote(identity, price, source, as_of=day(now), lifecycle=lifecycle, fetched_at=now)
