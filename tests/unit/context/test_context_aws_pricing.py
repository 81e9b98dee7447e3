"""AWS live prices through real boto3 against a loopback server speaking AWS's wire protocols."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.aws_api import REAL_FILTERS, AwsApiFake, make_product, spot_entry
from fakes.server import ThreadedServer, serve

from exporter.clock import ManualClock
from exporter.config import parse_config
from exporter.context.errors import ErrorCounts
from exporter.context.model import HostIdentity
from exporter.context.price.aws_api import AwsApi, AwsLookupError, pricing_region
from exporter.context.price.price_cache import FILE_NAME, PriceCache
from exporter.context.price.pricing import PriceResolver

P4D = HostIdentity(
    provider="aws",
    instance_type="p4d.24xlarge",
    instance_id="i-0d4e5f6a7b8c9d0e1",
    region="us-east-1",
    zone="us-east-1a",
    source="aws-imds",
)
# 2026-07-20T12:00:00Z, so spot StartTime and cache ages are deterministic.
EPOCH = 1784548800.0


@pytest.fixture
def fake() -> AwsApiFake:
    return AwsApiFake()


@pytest.fixture
def server(fake: AwsApiFake, aws_env: None) -> Iterator[ThreadedServer]:
    with serve(fake.app()) as running:
        yield running


def resolver(
    url: str,
    *,
    timeout: str = "10s",
    extra: dict[str, Any] | None = None,
    clock: ManualClock | None = None,
    cache: PriceCache | None = None,
):  # type: ignore[no-untyped-def]
    pricing: dict[str, Any] = {"aws": {"endpoint_url": url, "timeout": timeout}}
    pricing.update(extra or {})
    config = parse_config({"pricing": pricing})
    errors = ErrorCounts()
    clock = clock or ManualClock(epoch=EPOCH)
    return PriceResolver(config.pricing, clock, errors, cache or PriceCache(None)), errors


def resolve(res: PriceResolver, identity: HostIdentity = P4D):  # type: ignore[no-untyped-def]
    return asyncio.run(res.resolve(identity))


def test_one_match_among_decoys_gives_the_linux_on_demand_price(server: ThreadedServer, fake: AwsApiFake) -> None:
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.dollars_per_hour == pytest.approx(21.957642)
    assert quote.source == "aws-pricing-api"
    assert quote.lifecycle == "on-demand"
    assert quote.as_of == "2026-07-20"
    assert dict(errors.snapshot()) == {}
    sent = {f["Field"]: f["Value"] for f in fake.last_filters}
    assert sent == REAL_FILTERS
    assert fake.scopes == [("us-east-1", "pricing")]


@pytest.mark.parametrize("missing", ["marketoption", "capacitystatus", "tenancy", "preInstalledSw", "operation"])
def test_every_filter_is_needed_against_the_decoys(missing: str) -> None:
    """The decoy catalogue really catches a forgotten filter: without it, two or more products match.

    (operatingSystem is belt and braces: every non-Linux product also has its own operation code.)
    """
    from fakes.aws_api import _matches, p4d_catalogue

    full = [{"Field": field, "Value": value} for field, value in REAL_FILTERS.items()]
    catalogue = p4d_catalogue()
    assert sum(_matches(p, full) for p in catalogue) == 1
    partial = [f for f in full if f["Field"] != missing]
    assert sum(_matches(p, partial) for p in catalogue) >= 2


def test_two_matches_are_refused_and_fall_through_to_builtin(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.raw_price_list = [
        json.dumps(make_product("21.9576420000")),
        json.dumps(make_product("0.0320000000", marketoption="OnDemand")),
    ]
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert quote.as_of == "2026-07-20"
    assert quote.dollars_per_hour == pytest.approx(21.957642)
    assert errors.snapshot()[("price", "multi_match")] == 1


def test_zero_matches_fall_through(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.products = []
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert (quote.source, quote.dollars_per_hour) == ("builtin", pytest.approx(21.957642))
    assert errors.snapshot()[("price", "no_match")] == 1


def test_unknown_type_with_no_match_has_no_price_never_zero(server: ThreadedServer) -> None:
    res, errors = resolver(server.url)
    quote = resolve(res, HostIdentity(provider="aws", instance_type="x9z.mega", region="us-east-1"))
    assert quote.dollars_per_hour is None
    assert quote.source == "none"
    assert errors.snapshot()[("price", "no_match")] == 1


def test_throttled_once_then_success_uses_the_live_price(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.throttle_next = 1
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "aws-pricing-api"
    assert quote.dollars_per_hour == pytest.approx(21.957642)
    assert fake.pricing_calls == 2  # botocore's adaptive retry did the second call
    assert dict(errors.snapshot()) == {}


def test_throttled_throughout_counts_throttled(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.throttle_next = 100
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert errors.snapshot()[("price", "throttled")] == 1
    assert fake.pricing_calls == 4  # botocore's max_attempts=3 counts retries: 1 call + 3 retries


def test_bad_json_body_is_a_bad_response(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.bad_body = True
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert errors.snapshot()[("price", "bad_response")] == 1


@pytest.mark.parametrize(
    "item",
    [
        "{not json",
        json.dumps(make_product("0")),  # a zero price is never taken
        json.dumps(make_product("abc")),
        json.dumps({"product": {"attributes": {}}, "terms": {}}),
    ],
)
def test_unusable_price_items_fall_through(server: ThreadedServer, fake: AwsApiFake, item: str) -> None:
    fake.raw_price_list = [item]
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert errors.snapshot()[("price", "bad_response")] == 1


def test_wrong_unit_is_refused(server: ThreadedServer, fake: AwsApiFake) -> None:
    product = make_product("21.9576420000")
    for term in product["terms"]["OnDemand"].values():
        for dim in term["priceDimensions"].values():
            dim["unit"] = "Quantity"
    fake.raw_price_list = [json.dumps(product)]
    res, errors = resolver(server.url)
    assert resolve(res).source == "builtin"
    assert errors.snapshot()[("price", "bad_response")] == 1


def test_a_server_ignoring_filters_cannot_sneak_in_a_capacity_block(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.raw_price_list = [json.dumps(make_product("0.0320000000", marketoption="CapacityBlock"))]
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert quote.dollars_per_hour == pytest.approx(21.957642)
    assert errors.snapshot()[("price", "bad_response")] == 1


def test_access_denied_falls_through_and_is_logged_once(
    server: ThreadedServer, fake: AwsApiFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.deny_pricing = True
    res, errors = resolver(server.url)
    with caplog.at_level(logging.WARNING, logger="exporter.context.price.pricing"):
        first = resolve(res)
        second = resolve(res)
    assert first.source == second.source == "builtin"
    assert errors.snapshot()[("price", "access_denied")] == 2
    warnings = [r for r in caplog.records if "AccessDeniedException" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_no_credentials_falls_through(
    server: ThreadedServer, fake: AwsApiFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    res, errors = resolver(server.url)
    quote = resolve(res)
    assert quote.source == "builtin"
    assert errors.snapshot()[("price", "no_credentials")] == 1
    assert fake.pricing_calls == 0


def test_pricing_endpoint_region_follows_karpenter() -> None:
    assert pricing_region("us-east-1") == "us-east-1"
    assert pricing_region("us-west-2") == "us-east-1"
    assert pricing_region("eu-west-1") == "eu-central-1"
    assert pricing_region("ap-northeast-1") == "ap-south-1"
    assert pricing_region("cn-north-1") == "cn-northwest-1"
    assert pricing_region("sa-east-1") == "us-east-1"


def test_eu_host_asks_the_eu_central_endpoint(server: ThreadedServer, fake: AwsApiFake) -> None:
    res, _errors = resolver(server.url)
    identity = HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="eu-west-1", zone="eu-west-1b")
    quote = resolve(res, identity)
    assert quote.source == "aws-pricing-api"
    assert quote.dollars_per_hour == pytest.approx(24.15)
    assert fake.scopes == [("eu-central-1", "pricing")]


def test_govcloud_never_calls_the_price_list_api(server: ThreadedServer, fake: AwsApiFake) -> None:
    res, _ = resolver(server.url)
    quote = resolve(res, HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="us-gov-west-1"))
    assert quote.source == "builtin"
    assert fake.pricing_calls == 0


# --- spot ---------------------------------------------------------------------------------------

SPOT_P4D = HostIdentity(
    provider="aws", instance_type="p4d.24xlarge", region="us-east-1", zone="us-east-1a", lifecycle="spot"
)


def test_spot_price_is_the_latest_entry_for_the_zone(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.spot_history = [
        spot_entry("8.100000", "2026-07-20T09:00:00.000Z"),
        spot_entry("9.876500", "2026-07-20T11:30:00.000Z"),
        spot_entry("7.000000", "2026-07-20T10:00:00.000Z"),
        spot_entry("1.000000", "2026-07-20T11:59:00.000Z", zone="us-east-1b"),
    ]
    res, errors = resolver(server.url)
    quote = resolve(res, SPOT_P4D)
    assert quote.source == "aws-spot"
    assert quote.lifecycle == "spot"
    assert quote.dollars_per_hour == pytest.approx(9.8765)
    assert fake.ec2_calls == {"DescribeSpotPriceHistory": 1}
    assert fake.pricing_calls == 0
    assert dict(errors.snapshot()) == {}


def test_spot_request_limit_falls_back_to_on_demand(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.ec2_throttle_next = 100
    res, errors = resolver(server.url)
    quote = resolve(res, SPOT_P4D)
    assert quote.source == "aws-pricing-api"
    assert quote.lifecycle == "on-demand"  # an upper bound, flagged by the lifecycle
    assert errors.snapshot()[("price", "throttled")] == 1


def test_spot_with_no_history_falls_back(server: ThreadedServer, fake: AwsApiFake) -> None:
    res, errors = resolver(server.url)
    quote = resolve(res, SPOT_P4D)
    assert quote.source == "aws-pricing-api"
    assert errors.snapshot()[("price", "no_match")] == 1


# --- tags ---------------------------------------------------------------------------------------


def test_describe_tags_reads_the_instance_tags(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.tags = {"i-0d4e5f6a7b8c9d0e1": {"Team": "ml-platform", "Workload": "shared-pool"}, "i-other": {"Team": "x"}}
    api = AwsApi(5.0, server.url)
    tags = api.instance_tags("i-0d4e5f6a7b8c9d0e1", "us-east-1")
    assert sorted(tags) == [("Team", "ml-platform"), ("Workload", "shared-pool")]
    assert fake.scopes == [("us-east-1", "ec2")]


def test_describe_tags_denied_is_access_denied(server: ThreadedServer, fake: AwsApiFake) -> None:
    fake.deny_ec2 = True
    with pytest.raises(AwsLookupError) as info:
        AwsApi(5.0, server.url).instance_tags("i-0d4e5f6a7b8c9d0e1", "us-east-1")
    assert info.value.reason == "access_denied"


# --- bounds ---------------------------------------------------------------------------------------


def test_a_slow_api_is_not_waited_for_and_its_late_answer_is_used_next_time(
    server: ThreadedServer, fake: AwsApiFake
) -> None:
    """A spot host with no spot history: two calls of 0.2 s each (each within the 0.3 s read
    timeout) outlast the 0.3 s wait."""
    fake.delay = 0.2
    res, errors = resolver(server.url, timeout="0.3s")

    async def scenario() -> tuple[Any, Any, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await res.resolve(SPOT_P4D)
        waited = loop.time() - started
        deadline = loop.time() + 60  # the late answer, however loaded the machine
        while not res.late_answer_ready and loop.time() < deadline:
            await asyncio.sleep(0.05)
        second = await res.resolve(SPOT_P4D)
        return first, second, waited

    first, second, waited = asyncio.run(scenario())
    assert first.source == "builtin"  # with the answer waited for, this would be the API's price
    assert waited < 5.0  # a hang guard only: a loaded machine adds its own delay to the 0.3 s
    assert errors.snapshot()[("price", "timeout")] == 1
    assert second.source == "aws-pricing-api"
    assert second.dollars_per_hour == pytest.approx(21.957642)
    assert fake.pricing_calls == 1
    assert fake.ec2_calls == {"DescribeSpotPriceHistory": 1}


def test_disabled_aws_never_calls(server: ThreadedServer, fake: AwsApiFake) -> None:
    res, _ = resolver(server.url, extra={"aws": {"enabled": False, "endpoint_url": server.url}})
    assert resolve(res).source == "builtin"
    assert fake.pricing_calls == 0


# --- prices out of bounds (docs/pricing.md, "Accepted prices") ---------------------------------------


def strict_json(text: str) -> Any:
    """json.loads that refuses the non-JSON constants NaN, Infinity and -Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("spot", ["Infinity", "1e308", "1e-300"])
def test_an_absurd_spot_price_is_refused_and_the_on_demand_price_used(
    server: ThreadedServer, fake: AwsApiFake, tmp_path: Path, spot: str
) -> None:
    fake.spot_history = [spot_entry(spot, "2026-07-20T11:30:00.000Z")]
    res, errors = resolver(server.url, cache=PriceCache(str(tmp_path)))
    quote = resolve(res, SPOT_P4D)
    assert (quote.source, quote.dollars_per_hour) == ("aws-pricing-api", pytest.approx(21.957642))
    assert dict(errors.snapshot()) == {("price", "price_out_of_bounds"): 1}
    cached = strict_json((tmp_path / FILE_NAME).read_text())  # the cache stays strict JSON
    assert [e["source"] for e in cached["entries"].values()] == ["aws-pricing-api"]


@pytest.mark.parametrize("usd", ["Infinity", "1e308", "1e-300"])
def test_an_absurd_on_demand_price_is_refused_and_the_table_used(
    server: ThreadedServer, fake: AwsApiFake, tmp_path: Path, usd: str
) -> None:
    fake.raw_price_list = [json.dumps(make_product(usd))]
    res, errors = resolver(server.url, cache=PriceCache(str(tmp_path)))
    quote = resolve(res)
    assert (quote.source, quote.dollars_per_hour) == ("builtin", 21.957642)
    assert dict(errors.snapshot()) == {("price", "price_out_of_bounds"): 1}
    assert not (tmp_path / FILE_NAME).exists()
