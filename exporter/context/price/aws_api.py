"""Blocking AWS API calls through boto3: on-demand price, spot price, instance tags.

Everything here blocks and must run in a worker thread (`asyncio.to_thread`). boto3 is imported
lazily, on the first call, so hosts that never reach AWS never pay for it. Each failure becomes
an `AwsLookupError` whose `reason` is the `accel_exporter_errors_total` label: no_match,
multi_match, throttled, bad_response, price_out_of_bounds, no_credentials, access_denied,
unreachable, api_error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from exporter.context.price.price_bounds import price_problem

# Filters that select exactly one Linux on-demand price (shared tenancy, no pre-installed
# software, not a capacity reservation and not a Capacity Block).
ON_DEMAND_FILTERS: tuple[tuple[str, str], ...] = (
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("preInstalledSw", "NA"),
    ("capacitystatus", "Used"),
    ("marketoption", "OnDemand"),
    ("operation", "RunInstances"),
)
SPOT_PRODUCT = "Linux/UNIX"
_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
}
_MAX_PAGES = 5


class AwsLookupError(Exception):
    """A lookup that gave no usable answer; `reason` is the error label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pricing_region(region: str) -> str:
    """The Price List API endpoint region for a priced region (the mapping Karpenter uses).

    The endpoint's region is unrelated to the region being priced; only a few regions serve it.
    """
    if region.startswith("ap-"):
        return "ap-south-1"
    if region.startswith("eu-"):
        return "eu-central-1"
    if region.startswith("cn-"):
        return "cn-northwest-1"
    return "us-east-1"


def live_pricing_available(region: str) -> bool:
    """False where the Price List API cannot give a USD price: GovCloud (no API) and China (CNY)."""
    return bool(region) and not region.startswith(("us-gov-", "cn-"))


def _classify(exc: BaseException) -> AwsLookupError:
    """Map a boto3/botocore exception to an error reason without importing botocore at module load."""
    from botocore import exceptions as bex
    from botocore.parsers import ResponseParserError

    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError)):
        return AwsLookupError("no_credentials", "no AWS credentials found (instance role, env or profile)")
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", ""))[:200]
        if code in _THROTTLED:
            return AwsLookupError("throttled", f"throttled by AWS ({code}) after retries")
        if code in _DENIED:
            return AwsLookupError("access_denied", f"AWS refused the call ({code}): {message}")
        return AwsLookupError("api_error", f"AWS error {code}: {message}")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError)):
        return AwsLookupError("unreachable", f"AWS endpoint not reachable: {exc.__class__.__name__}")
    if isinstance(exc, (ResponseParserError, ValueError, KeyError, TypeError)):
        return AwsLookupError("bad_response", f"unreadable AWS answer: {exc.__class__.__name__}: {str(exc)[:200]}")
    if isinstance(exc, bex.BotoCoreError):
        return AwsLookupError("unreachable", f"AWS call failed: {exc.__class__.__name__}: {str(exc)[:200]}")
    return AwsLookupError("api_error", f"AWS call failed: {exc.__class__.__name__}: {str(exc)[:200]}")


def hourly_usd(product: Mapping[str, Any]) -> float:
    """The single positive USD-per-hour on-demand rate of one Price List product.

    Walks terms.OnDemand.*.priceDimensions.*; requires unit "Hrs" and exactly one distinct
    positive USD value, else AwsLookupError("bad_response").
    """
    terms = product.get("terms", {}).get("OnDemand")
    if not isinstance(terms, Mapping) or not terms:
        raise AwsLookupError("bad_response", "product has no OnDemand terms")
    rates: set[float] = set()
    for term in terms.values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit") != "Hrs":
                continue
            try:
                usd = float(dimension.get("pricePerUnit", {}).get("USD", ""))
            except (TypeError, ValueError):
                continue
            if usd > 0:  # NaN is not; an infinite or absurd rate is refused by _bounded, by name
                rates.add(usd)
    if len(rates) != 1:
        found = ", ".join(f"{r:g}" for r in sorted(rates)) or "none"
        raise AwsLookupError("bad_response", f"expected one positive USD hourly rate, found {found}")
    return _bounded(rates.pop(), "on-demand price")


def _bounded(dollars_per_hour: float, what: str) -> float:
    """The price when it is within price_bounds, else AwsLookupError("price_out_of_bounds")."""
    problem = price_problem(dollars_per_hour)
    if problem is not None:
        raise AwsLookupError("price_out_of_bounds", f"{what} refused: {problem}")
    return dollars_per_hour


class AwsApi:
    """boto3 clients for one endpoint override, created on first use and shared between threads."""

    def __init__(self, timeout_seconds: float, endpoint_url: str | None = None) -> None:
        self._timeout = timeout_seconds
        self._endpoint_url = endpoint_url
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _client(self, service: str, region: str) -> Any:
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retries={"mode": "adaptive", "max_attempts": 3},
                )
                # A session per client: boto3's default session is not safe to share between threads.
                session: Any = boto3.session.Session()
                client = session.client(service, region_name=region, endpoint_url=self._endpoint_url, config=config)
                self._clients[(service, region)] = client
            return client

    def _call(self, service: str, region: str, operation: str, **kwargs: Any) -> Mapping[str, Any]:
        try:
            client = self._client(service, region)
            result: Mapping[str, Any] = getattr(client, operation)(**kwargs)
            return result
        except AwsLookupError:
            raise
        except Exception as exc:  # every failure becomes a reason, never a crash
            raise _classify(exc) from None

    def on_demand_price(self, instance_type: str, region: str) -> float:
        """The Linux on-demand USD hourly price from the Price List API (GetProducts)."""
        filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type}]
        filters.append({"Type": "TERM_MATCH", "Field": "regionCode", "Value": region})
        filters += [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in ON_DEMAND_FILTERS]
        items: list[Any] = []
        token: str | None = None
        for _ in range(_MAX_PAGES):
            kwargs: dict[str, Any] = {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"}
            kwargs["MaxResults"] = 100
            if token:
                kwargs["NextToken"] = token
            page = self._call("pricing", pricing_region(region), "get_products", **kwargs)
            page_items = page.get("PriceList")
            if not isinstance(page_items, list):
                raise AwsLookupError("bad_response", "GetProducts answer has no PriceList list")
            items += page_items
            token = page.get("NextToken")
            if not token or len(items) > 1:
                break
        if not items:
            raise AwsLookupError("no_match", f"no Linux on-demand price for {instance_type} in {region}")
        if len(items) > 1:
            raise AwsLookupError(
                "multi_match", f"{len(items)} products match {instance_type} in {region}; refusing to guess"
            )
        try:
            product = json.loads(items[0]) if isinstance(items[0], str) else items[0]
        except ValueError:
            raise AwsLookupError("bad_response", "a PriceList item is not valid JSON") from None
        if not isinstance(product, Mapping):
            raise AwsLookupError("bad_response", "a PriceList item is not a JSON object")
        _check_attributes(product, instance_type, region)
        return hourly_usd(product)

    def spot_price(self, instance_type: str, zone: str, region: str, now: datetime) -> float:
        """The current Linux/UNIX spot price in `zone` (DescribeSpotPriceHistory, latest entry)."""
        page = self._call(
            "ec2",
            region,
            "describe_spot_price_history",
            InstanceTypes=[instance_type],
            ProductDescriptions=[SPOT_PRODUCT],
            AvailabilityZone=zone,
            StartTime=now,
            MaxResults=100,
        )
        history = page.get("SpotPriceHistory", [])
        best: tuple[datetime, float] | None = None
        for entry in history if isinstance(history, list) else []:
            if entry.get("AvailabilityZone", zone) != zone or entry.get("InstanceType", instance_type) != instance_type:
                continue
            try:
                price = float(entry["SpotPrice"])
            except (KeyError, TypeError, ValueError):
                raise AwsLookupError("bad_response", "a spot price entry has no readable SpotPrice") from None
            stamp = entry.get("Timestamp")
            if not isinstance(stamp, datetime):
                raise AwsLookupError("bad_response", "a spot price entry has no Timestamp")
            if best is None or stamp > best[0]:
                best = (stamp, price)
        if best is None:
            raise AwsLookupError("no_match", f"no spot price for {instance_type} in {zone}")
        if not best[1] > 0:
            raise AwsLookupError("bad_response", f"spot price for {instance_type} in {zone} is not positive")
        return _bounded(best[1], f"spot price for {instance_type} in {zone}")

    def instance_tags(self, instance_id: str, region: str) -> list[tuple[str, str]]:
        """The instance's tags from EC2 DescribeTags (the fallback when IMDS tags are not enabled)."""
        page = self._call(
            "ec2",
            region,
            "describe_tags",
            Filters=[{"Name": "resource-id", "Values": [instance_id]}],
            MaxResults=1000,
        )
        tags = page.get("Tags", [])
        if not isinstance(tags, list):
            raise AwsLookupError("bad_response", "DescribeTags Tags is not a list")
        return [(str(t.get("Key", "")), str(t.get("Value", ""))) for t in tags if isinstance(t, Mapping)]


def _check_attributes(product: Mapping[str, Any], instance_type: str, region: str) -> None:
    """Refuse a product whose attributes contradict the filters (a server that ignored them)."""
    attributes = product.get("product", {}).get("attributes", {})
    if not isinstance(attributes, Mapping):
        raise AwsLookupError("bad_response", "product has no attributes")
    wanted = dict(ON_DEMAND_FILTERS, instanceType=instance_type, regionCode=region)
    for field, value in wanted.items():
        seen = attributes.get(field)
        if seen is not None and str(seen).lower() != value.lower():
            raise AwsLookupError("bad_response", f"product has {field}={seen!r}, asked for {value!r}")
