"""Host identity from loopback fakes of AWS IMDSv2, the GCP metadata server and Azure IMDS."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import aiohttp
import pytest
from fakes.imds import AwsImdsFake, AzureFake, GcpFake
from fakes.server import ThreadedServer, closed_port_url, serve, silent_listener

from exporter.clock import ManualClock
from exporter.config import HostSettings, parse_config
from exporter.context.errors import ErrorCounts
from exporter.context.host.aws_imds import AwsImds
from exporter.context.host.azure_imds import discover_azure
from exporter.context.host.discovery import Discovered, NotThisCloud
from exporter.context.host.gcp_metadata import discover_gcp
from exporter.context.host.metadata import MetadataResolver, merge_identity
from exporter.context.model import HostIdentity
from exporter.context.provider import ContextProvider
from exporter.readings import HostHints
from exporter.sim.host import SimulatedHost
from exporter.sim.scenario import Scenario
from exporter.zones import region_from_zone


@pytest.fixture
def imds() -> AwsImdsFake:
    return AwsImdsFake()


@pytest.fixture
def imds_server(imds: AwsImdsFake) -> Iterator[ThreadedServer]:
    with serve(imds.app()) as running:
        yield running


def metadata_config(**settings: Any) -> Any:
    return parse_config({"metadata": settings, "pricing": {"aws": {"enabled": False}}})


def discover(config: Any, clock: ManualClock | None = None) -> tuple[Discovered | None, ErrorCounts]:
    errors = ErrorCounts()
    resolver = MetadataResolver(config.metadata, clock or ManualClock(), errors)
    return asyncio.run(resolver.discover()), errors


# --- AWS IMDSv2 -----------------------------------------------------------------------------------


def test_imds_identity(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    found, errors = discover(metadata_config(providers=["aws"], aws_endpoint=imds_server.url))
    assert found is not None
    assert found.identity == HostIdentity(
        provider="aws",
        instance_type="p4d.24xlarge",
        instance_id="i-0d4e5f6a7b8c9d0e1",
        region="us-east-1",
        zone="us-east-1a",
        lifecycle="on-demand",
        tags=(),
        source="aws-imds",
    )
    assert found.tags_enabled is False  # tags/instance answered 404
    assert imds.token_puts == 1
    assert imds.bad_token_requests == 0  # the TTL header was sent
    assert imds.unauthorized == 0  # every GET carried the token
    assert dict(errors.snapshot()) == {}


def test_imds_tags_when_enabled(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    imds.tags = {"Team": "ml-platform", "Workload": "shared-pool", "Name": "gpu-42"}
    imds.meta["instance-life-cycle"] = "spot"
    found, _ = discover(metadata_config(providers=["aws"], aws_endpoint=imds_server.url))
    assert found is not None and found.tags_enabled
    assert found.identity.tags == (("Name", "gpu-42"), ("Team", "ml-platform"), ("Workload", "shared-pool"))
    assert found.identity.lifecycle == "spot"


def test_imds_tag_reading_can_be_switched_off(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    imds.tags = {"Team": "ml-platform"}
    found, _ = discover(metadata_config(providers=["aws"], aws_endpoint=imds_server.url, aws_instance_tags=False))
    assert found is not None and found.identity.tags == ()


def test_imds_region_from_zone_when_placement_region_is_missing(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    del imds.meta["placement/region"]
    imds.meta["placement/availability-zone"] = "eu-west-1c"
    found, _ = discover(metadata_config(providers=["aws"], aws_endpoint=imds_server.url))
    assert found is not None and found.identity.region == "eu-west-1"


def test_region_from_zone() -> None:
    assert region_from_zone("us-east-1a") == "us-east-1"
    assert region_from_zone("europe-west4-b") == "europe-west4"
    assert region_from_zone("") == ""
    assert region_from_zone("us-gov-west-1b") == "us-gov-west-1"
    assert region_from_zone("us-central1-a") == "us-central1"
    # AWS Local and Wavelength Zones hang off their parent region with a dash.
    assert region_from_zone("us-east-1-bos-1a") == "us-east-1"
    assert region_from_zone("us-east-1-wl1-bos-wlz-1") == "us-east-1"
    # Not zone names: no made-up region.
    assert region_from_zone("use1-az1") == ""
    assert region_from_zone("2") == ""
    assert region_from_zone("us-east-1") == ""


def test_token_is_reused_then_renewed_before_its_ttl(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    clock = ManualClock()
    client = AwsImds(imds_server.url, clock, token_ttl=3600)

    async def scenario() -> list[str | None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            answers = [await client.get(session, "instance-type")]
            clock.advance(3000)  # 83 % of the TTL: still fine
            answers.append(await client.get(session, "instance-id"))
            assert imds.token_puts == 1
            clock.advance(301)  # within the renewal margin (10 % of the TTL, at most 5 min)
            answers.append(await client.get(session, "instance-type"))
            return answers

    answers = asyncio.run(scenario())
    assert answers == ["p4d.24xlarge", "i-0d4e5f6a7b8c9d0e1", "p4d.24xlarge"]
    assert imds.token_puts == 2
    assert imds.unauthorized == 0


def test_401_is_retried_once_with_a_fresh_token(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    client = AwsImds(imds_server.url, ManualClock())

    async def scenario() -> str | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            await client.token(session)
            imds.revoke_tokens()  # e.g. the instance was stopped and started
            return await client.get(session, "instance-id")

    assert asyncio.run(scenario()) == "i-0d4e5f6a7b8c9d0e1"
    assert imds.unauthorized == 1
    assert imds.token_puts == 2


def test_fake_imds_refuses_a_token_request_without_ttl(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    async def scenario() -> tuple[int, int]:
        async with aiohttp.ClientSession() as session:
            async with session.put(imds_server.url + "/latest/api/token") as no_ttl:
                pass
            async with session.get(imds_server.url + "/latest/meta-data/instance-id") as no_token:
                pass
            return no_ttl.status, no_token.status

    assert asyncio.run(scenario()) == (400, 401)


def test_a_slow_imds_does_not_delay_start_beyond_the_timeout(imds: AwsImdsFake) -> None:
    imds.delay = 30.0
    with serve(imds.app()) as server:
        config = parse_config(
            {
                "metadata": {"providers": ["aws"], "aws_endpoint": server.url, "timeout": "300ms"},
                "pricing": {"aws": {"timeout": "10s"}},
            }
        )
        provider = ContextProvider(config, ManualClock())
        started = time.monotonic()
        asyncio.run(provider.start())
        took = time.monotonic() - started
    # Margins for a loaded machine: waiting for the IMDS would take 30 s, and a live price lookup
    # (there should be none without an AWS identity) up to its 10 s timeout.
    assert took < 5.0
    context = provider.current()
    assert context.identity.source == "none"
    assert context.price.source == "none"
    assert provider.status()[0] is False


def test_no_cloud_at_all_starts_at_once_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with silent_listener() as black_hole:
        config = metadata_config(
            providers=["aws", "gcp", "azure"],
            aws_endpoint=closed_port_url(),
            gcp_endpoint=closed_port_url(),
            azure_endpoint=black_hole,
            timeout="400ms",
        )
        provider = ContextProvider(config, ManualClock())
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            asyncio.run(provider.start())
        took = time.monotonic() - started
    assert took < 5.0  # the 0.4 s timeout plus a loaded machine's delays; the black hole never answers
    assert provider.current().identity == HostIdentity()
    assert provider.metadata_status()[0] is True  # no cloud is normal, not a failure
    lines = [r.getMessage() for r in caplog.records if "no cloud metadata service answered" in r.getMessage()]
    assert len(lines) == 1
    assert "azure: no answer within 0.4s" in lines[0]
    assert any("host identity from none" in r.getMessage() for r in caplog.records)


# --- GCP and Azure ---------------------------------------------------------------------------------


def test_gcp_identity() -> None:
    gcp = GcpFake(preemptible="TRUE")
    with serve(gcp.app()) as server:
        found, _ = discover(metadata_config(providers=["gcp"], gcp_endpoint=server.url))
    assert found is not None
    assert found.identity == HostIdentity(
        provider="gcp",
        instance_type="a2-highgpu-1g",
        instance_id="4520031799277581759",
        region="us-central1",
        zone="us-central1-a",
        lifecycle="spot",
        source="gcp-metadata",
    )


def test_something_else_at_the_gcp_address_is_not_gcp(imds_server: ThreadedServer) -> None:
    found, errors = discover(metadata_config(providers=["gcp"], gcp_endpoint=imds_server.url))
    assert found is None
    assert dict(errors.snapshot()) == {}


def test_azure_identity_and_tags() -> None:
    azure = AzureFake()
    with serve(azure.app()) as server:
        found, _ = discover(metadata_config(providers=["azure"], azure_endpoint=server.url))
    assert found is not None
    identity = found.identity
    assert (identity.provider, identity.instance_type, identity.region, identity.zone) == (
        "azure",
        "Standard_ND96asr_v4",
        "eastus",
        "2",
    )
    assert identity.lifecycle == "spot"
    assert identity.tags == (("Team", "vision"), ("Workload", "train"))


def test_first_answer_wins(imds: AwsImdsFake) -> None:
    imds.delay = 40.0
    gcp = GcpFake()
    with serve(imds.app()) as aws_server, serve(gcp.app()) as gcp_server:
        config = metadata_config(
            providers=["aws", "gcp", "azure"],
            aws_endpoint=aws_server.url,
            gcp_endpoint=gcp_server.url,
            azure_endpoint=closed_port_url(),
            timeout="30s",
        )
        started = time.monotonic()
        found, _ = discover(config)
        took = time.monotonic() - started
    assert found is not None and found.identity.provider == "gcp"
    assert took < 10.0  # did not wait for the AWS answer or the timeout (30 s each)


def test_an_answer_that_breaks_midway_is_counted(imds_server: ThreadedServer, imds: AwsImdsFake) -> None:
    del imds.meta["instance-type"]
    found, errors = discover(metadata_config(providers=["aws"], aws_endpoint=imds_server.url))
    assert found is None
    assert errors.snapshot()[("metadata", "bad_response")] == 1


# --- precedence -------------------------------------------------------------------------------------


class _Py310Timeout(Exception):
    """Python 3.10's asyncio.TimeoutError: not a subclass of the builtin TimeoutError."""


class _TimingOutSession:
    """Stands in for an aiohttp session whose total timeout expires on every request."""

    def get(self, *args: Any, **kwargs: Any) -> _TimingOutRequest:
        return _TimingOutRequest()

    put = get


class _TimingOutRequest:
    async def __aenter__(self) -> None:
        raise asyncio.TimeoutError  # looked up when raised: the 3.10 class in the test below

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_timeouts_mean_not_this_cloud_also_on_python_310(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp raises asyncio.TimeoutError, which only 3.11 made the builtin TimeoutError; a client
    # catching the builtin would let a 3.10 timeout escape as an "internal" error.
    monkeypatch.setattr(asyncio, "TimeoutError", _Py310Timeout)
    session = cast(aiohttp.ClientSession, _TimingOutSession())
    probes: dict[str, Callable[[], Awaitable[Discovered]]] = {
        "aws": lambda: AwsImds("http://127.0.0.1:9", ManualClock()).discover(session),
        "gcp": lambda: discover_gcp(session, "http://127.0.0.1:9"),
        "azure": lambda: discover_azure(session, "http://127.0.0.1:9"),
    }
    with pytest.raises(NotThisCloud, match="not reachable: _Py310Timeout"):
        asyncio.run(probes[provider]())


def test_static_config_overrides_field_by_field() -> None:
    discovered = HostIdentity(
        provider="aws",
        instance_type="p4d.24xlarge",
        instance_id="i-1",
        region="us-east-1",
        zone="us-east-1a",
        tags=(("Team", "from-imds"), ("Workload", "w")),
        source="aws-imds",
    )
    static = HostSettings(region="us-west-2", tags=(("Team", "from-config"),))
    merged = merge_identity(discovered, static)
    assert merged.region == "us-west-2"
    assert merged.instance_type == "p4d.24xlarge"
    assert dict(merged.tags) == {"Team": "from-config", "Workload": "w"}
    assert merged.source == "aws-imds+config"
    assert merge_identity(None, HostSettings(instance_type="p5.48xlarge")).source == "config"
    assert merge_identity(None, HostSettings(instance_type="p5.48xlarge")).provider == "static"
    assert merge_identity(discovered, HostSettings()) is discovered


def test_hints_fill_in_only_when_no_service_answered() -> None:
    hints = HostHints(instance_type="trn1.32xlarge", instance_id="i-0abc", region="us-east-1", zone="us-east-1d")
    from_hints = merge_identity(None, HostSettings(), None, hints)
    assert (from_hints.provider, from_hints.instance_type, from_hints.source) == (
        "aws",
        "trn1.32xlarge",
        "neuron-monitor",
    )
    discovered = HostIdentity(provider="aws", instance_type="inf2.xlarge", source="aws-imds")
    assert merge_identity(discovered, HostSettings(), None, hints).instance_type == "inf2.xlarge"


def test_note_hints_prices_the_host_at_once() -> None:
    config = metadata_config(providers=[])
    provider = ContextProvider(config, ManualClock())
    asyncio.run(provider.start())
    assert provider.current().price.dollars_per_hour is None
    provider.note_hints(
        HostHints(provider="aws", instance_type="trn1.32xlarge", instance_id="i-0abc", region="us-east-1")
    )
    context = provider.current()
    assert context.identity.source == "neuron-monitor"
    assert context.price.source == "builtin"
    assert context.price.dollars_per_hour == pytest.approx(21.5)


def test_demo_host_needs_no_network() -> None:
    demo = HostSettings(
        provider="aws", instance_type="p4d.24xlarge", region="us-east-1", zone="us-east-1a", lifecycle="on-demand"
    )
    with silent_listener() as black_hole:  # would hang for the whole timeout if asked
        config = metadata_config(
            aws_endpoint=black_hole, gcp_endpoint=black_hole, azure_endpoint=black_hole, timeout="5s"
        )
        provider = ContextProvider(config, ManualClock(), SimulatedHost(Scenario("test", "", demo)))
        started = time.monotonic()
        asyncio.run(provider.start())
        assert time.monotonic() - started < 2.5  # asking the black hole would take its 5 s timeout
    context = provider.current()
    assert context.identity.source == "demo"
    assert (context.price.source, context.price.as_of) == ("builtin", "2026-07-20")
    assert context.price.dollars_per_hour == pytest.approx(21.957642)
