"""The context provider: resolves host identity and price at start, refreshes them on a slow timer.

Public API used by the daemon (keep it stable):
- `ContextProvider(config, clock, host=None, state_directory=None)`: `host` is the host
  environment (`HostView`); None is a real host;
- `await provider.start()`: first resolution, bounded by `metadata.timeout` + `pricing.aws.timeout`;
- `provider.current() -> HostContext`: never blocks, never raises;
- `await provider.refresh()`: call on a slow timer (every minute is fine); it only does what is due:
  metadata every `metadata.refresh_interval`, the price every `pricing.refresh_interval` (spot:
  `pricing.spot_refresh_interval`), a failed live lookup again after `RETRY_SECONDS`;
- `provider.note_hints(hints)`: host identity learned by a source (neuron-monitor);
- `provider.status() -> tuple[bool, float]`: (price known, duration of the last price resolution),
  for the `price` collector's self-metrics;
- `provider.metadata_status() -> tuple[bool, float]`: (identity known, duration of the last
  metadata resolution), for the `metadata` collector;
- `provider.errors() -> Mapping[tuple[str, str], int]`: cumulative errors by (collector, reason),
  collector being `price` or `metadata`;
- `provider.set_pod_lookup(lookup)`: wire pod names into attribution (see attribution.PodLookup);
- `provider.set_job_lookup(lookup)`: wire Slurm job accounts into attribution (see attribution.JobLookup).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace

from exporter.clock import Clock
from exporter.config.model import Config
from exporter.context.errors import ErrorCounts, LogOnce
from exporter.context.host.discovery import Discovered, bounded_tags
from exporter.context.host.metadata import COLLECTOR as METADATA
from exporter.context.host.metadata import MetadataResolver, describe, merge_identity
from exporter.context.model import HostContext, HostIdentity, HostView, PriceQuote
from exporter.context.owner.attribution import JobLookup, PodLookup, RuleAttributor
from exporter.context.price.aws_api import AwsApi, AwsLookupError
from exporter.context.price.builtin_prices import builtin_table
from exporter.context.price.price_cache import PriceCache
from exporter.context.price.pricing import PriceResolver
from exporter.context.threads import run_in_thread
from exporter.readings import HostHints

log = logging.getLogger(__name__)

RETRY_SECONDS = 900.0  # a failed live lookup or an absent metadata service is retried this often at most


def _identity_key(identity: HostIdentity) -> tuple[str, ...]:
    return (identity.provider, identity.instance_type, identity.region, identity.zone, identity.lifecycle)


def _describe_price(quote: PriceQuote) -> str:
    if quote.dollars_per_hour is None:
        models = len(quote.device_model_prices)
        return f"no instance price (source {quote.source}{f', {models} device-model prices' if models else ''})"
    dated = f", as of {quote.as_of}" if quote.as_of else ""
    cached = ", from the state cache" if quote.cached else ""
    share = f", accelerator share {quote.accelerator_share:.3f}" if quote.accelerator_share != 1.0 else ""
    return f"{quote.dollars_per_hour:g} $/h (source {quote.source}, {quote.lifecycle}{dated}{cached}{share})"


class ContextProvider:
    """Holds the current HostContext; see the module docstring for the contract."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        host: HostView | None = None,
        state_directory: str | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        # A simulated host declares its identity and is offline and deterministic: no metadata
        # services, no AWS calls, no disk cache.
        self._live = live = host is None or host.live
        self._given_identity = host.given_identity if host is not None else None
        self._errors = ErrorCounts()
        self._once = LogOnce(log)
        self._metadata = MetadataResolver(config.metadata, clock, self._errors)
        self._api = AwsApi(config.pricing.aws_timeout_seconds, config.pricing.aws_endpoint_url)
        self._pricing = PriceResolver(
            config.pricing,
            clock,
            self._errors,
            PriceCache(state_directory if live else None),
            live=live,
            api=self._api,
            carbon=config.carbon,
        )
        self._base_attributor = RuleAttributor(config.attribution)
        self._hints: HostHints | None = None
        self._discovered: Discovered | None = None
        self._api_tags: tuple[tuple[str, str], ...] | None = None
        self._identity = self._effective(merge_identity(None, config.host, self._given_identity))
        # Before start(): what config, a simulated host and the cache tell without any I/O wait.
        self._price = self._pricing.resolve_offline(self._identity) if self._identity.instance_type else PriceQuote()
        self._context = HostContext(self._identity, self._price, self._base_attributor.with_tags(self._identity.tags))
        self._price_duration = 0.0
        self._metadata_duration = 0.0
        self._metadata_ok = True
        self._next_metadata = float("-inf")
        self._next_price = float("-inf")
        self._started = False
        self._lock = asyncio.Lock()

    # --- public API -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve identity and price for the first time; logs where each came from."""
        log.info("built-in price table: %s list prices as of %s", builtin_table().region, builtin_table().as_of)
        await self.refresh()
        self._started = True

    async def refresh(self) -> None:
        """Resolve what is due; keeps the previous answer when a source fails. Never raises."""
        async with self._lock:
            try:
                await self._refresh()
            except Exception:  # the exporter must keep serving whatever happens here
                self._errors.add(METADATA, "internal")
                log.exception("context refresh failed; keeping the previous host context")

    def current(self) -> HostContext:
        """The latest context."""
        return self._context

    def note_hints(self, hints: HostHints) -> None:
        """Remember identity a source learned; used for fields no metadata service or config gave."""
        if hints == self._hints:
            return
        self._hints = hints
        if self._discovered is not None or self._given_identity is not None:
            return
        identity = self._effective(merge_identity(None, self._config.host, None, hints))
        if (
            _identity_key(identity) != _identity_key(self._identity)
            or identity.instance_id != self._identity.instance_id
        ):
            log.info("host identity from %s: %s", identity.source, describe(identity))
            price = self._pricing.resolve_offline(identity)
            self._publish(identity, price)
            self._next_price = float("-inf")  # a live lookup, if any applies, on the next refresh

    def status(self) -> tuple[bool, float]:
        """Whether a price is known (instance or device-model prices), and how long the last resolution took."""
        price = self._context.price
        return price.known or bool(price.device_model_prices), self._price_duration

    def metadata_status(self) -> tuple[bool, float]:
        """Whether the last metadata resolution went without errors, and how long it took.

        No metadata service answering is normal (on premises) and counts as success; a service
        that answered badly, or a DescribeTags fallback that failed, does not.
        """
        return self._metadata_ok, self._metadata_duration

    def errors(self) -> Mapping[tuple[str, str], int]:
        """Cumulative error counts by (collector, reason); collector is `price` or `metadata`."""
        return self._errors.snapshot()

    def set_pod_lookup(self, lookup: PodLookup | None) -> None:
        """Give attribution a way from a process's cgroup to its pod (namespace and pod names)."""
        self._base_attributor = self._base_attributor.with_pod_lookup(lookup)
        self._publish(self._identity, self._price)

    def set_job_lookup(self, lookup: JobLookup | None) -> None:
        """Give attribution a way from a Slurm job ID to the job's account and partition."""
        self._base_attributor = self._base_attributor.with_job_lookup(lookup)
        self._publish(self._identity, self._price)

    # --- internals ------------------------------------------------------------------------------

    def _publish(self, identity: HostIdentity, price: PriceQuote) -> None:
        if price.known and price.source != "config" and price.lifecycle != identity.lifecycle:
            self._once.log(
                f"lifecycle-mismatch:{identity.lifecycle}:{price.lifecycle}",
                logging.WARNING,
                "host lifecycle is %s but its price is the %s price (no %s price found)",
                identity.lifecycle,
                price.lifecycle,
                identity.lifecycle,
            )
        self._identity, self._price = identity, price
        self._context = HostContext(identity, price, self._base_attributor.with_tags(identity.tags))

    def _metadata_enabled(self) -> bool:
        return self._live and self._config.host.provider != "static"

    async def _refresh(self) -> None:
        now = self._clock.monotonic()
        identity = self._identity
        metadata_due = now >= self._next_metadata
        metadata_errors = self._metadata_error_count()
        if metadata_due:
            started = self._clock.monotonic()
            if self._metadata_enabled():
                discovered = await self._metadata.discover()
                if discovered is not None:
                    self._discovered = discovered
            identity = self._merged()
            self._metadata_duration = self._clock.monotonic() - started
            interval = self._config.metadata.refresh_seconds
            if self._discovered is None and self._metadata_enabled():
                interval = min(interval, RETRY_SECONDS)
            self._next_metadata = now + interval
            if identity != self._identity or not self._started:
                level = (
                    logging.INFO
                    if _identity_key(identity) != _identity_key(self._identity) or not self._started
                    else logging.DEBUG
                )
                log.log(level, "host identity from %s: %s", identity.source, describe(identity))
        price_due = (
            now >= self._next_price
            or _identity_key(identity) != _identity_key(self._identity)
            or self._pricing.late_answer_ready
        )
        tags_due = metadata_due and self._describe_tags_applicable()
        if not (price_due or tags_due):
            if metadata_due:
                self._metadata_ok = self._metadata_error_count() == metadata_errors
            self._publish(identity, self._price)
            return
        started = self._clock.monotonic()
        price_step = self._pricing.resolve(identity) if price_due else self._keep_price()
        tags_step = self._describe_tags() if tags_due else self._no_tag_change()
        price, tags_changed = await asyncio.gather(price_step, tags_step)
        if tags_changed:
            identity = self._merged()
        if metadata_due:
            self._metadata_ok = self._metadata_error_count() == metadata_errors
        if price_due:
            self._price_duration = self._clock.monotonic() - started
            interval = self._pricing.refresh_interval(identity)
            if price.fetched_at is not None:  # a cached live price is due when it turns stale
                interval = max(60.0, interval - max(0.0, self._clock.time() - price.fetched_at))
            if self._pricing.last_live_failed:
                interval = min(interval, RETRY_SECONDS)
            self._next_price = now + interval
            if price != self._price or not self._started:
                log.info(
                    "instance price for %s: %s", identity.instance_type or "(unknown type)", _describe_price(price)
                )
        self._publish(identity, price)

    def _metadata_error_count(self) -> int:
        return sum(count for (collector, _), count in self._errors.snapshot().items() if collector == METADATA)

    async def _keep_price(self) -> PriceQuote:
        return self._price

    async def _no_tag_change(self) -> bool:
        return False

    def _merged(self) -> HostIdentity:
        discovered = self._discovered.identity if self._discovered is not None else None
        if discovered is not None and self._api_tags is not None and not self._discovered_tags_enabled():
            discovered = replace(discovered, tags=self._api_tags)
        return self._effective(merge_identity(discovered, self._config.host, self._given_identity, self._hints))

    def _effective(self, identity: HostIdentity) -> HostIdentity:
        """Apply pricing.lifecycle: a reserved or savings-plan host looks on-demand to IMDS."""
        override = self._config.pricing.lifecycle
        return replace(identity, lifecycle=override) if override and override != identity.lifecycle else identity

    def _discovered_tags_enabled(self) -> bool:
        return self._discovered is not None and self._discovered.tags_enabled

    def _describe_tags_applicable(self) -> bool:
        discovered = self._discovered
        return (
            discovered is not None
            and not discovered.tags_enabled
            and discovered.identity.provider == "aws"
            and bool(discovered.identity.instance_id and discovered.identity.region)
            and self._config.metadata.aws_describe_tags
            and self._config.pricing.aws_enabled
        )

    async def _describe_tags(self) -> bool:
        """EC2 DescribeTags for an instance whose IMDS does not expose tags; True when tags changed."""
        assert self._discovered is not None
        instance_id, region = self._discovered.identity.instance_id, self._discovered.identity.region
        future = run_in_thread("aws-tags", lambda: self._api.instance_tags(instance_id, region))
        done, _ = await asyncio.wait({future}, timeout=self._config.pricing.aws_timeout_seconds)
        if not done:
            future.add_done_callback(lambda f: f.exception())  # retrieve it later; nobody waits any more
            self._errors.add(METADATA, "timeout")
            return False
        try:
            tags = bounded_tags(future.result())
        except AwsLookupError as exc:
            self._errors.add(METADATA, exc.reason)
            self._once.log(
                f"describe-tags:{exc.reason}",
                logging.WARNING,
                "instance tags: IMDS tags are not enabled and EC2 DescribeTags failed (%s). Enable "
                "InstanceMetadataTags or allow ec2:DescribeTags to attribute this instance by its tags.",
                exc,
            )
            return False
        changed = tags != self._api_tags
        if changed:
            log.info("instance tags from EC2 DescribeTags: %d tags", len(tags))
        self._api_tags = tags
        return changed
