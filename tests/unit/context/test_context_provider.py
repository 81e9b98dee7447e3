"""ContextProvider end to end: IMDSv2 and AWS API fakes on loopback, the state cache, refresh timing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.aws_api import AwsApiFake, spot_entry
from fakes.imds import AwsImdsFake
from fakes.server import ThreadedServer, serve

from exporter.clock import ManualClock
from exporter.config import parse_config
from exporter.context.price.price_cache import FILE_NAME
from exporter.context.provider import ContextProvider
from exporter.readings import ProcessReading

EPOCH = 1784548800.0  # 2026-07-20T12:00:00Z


@pytest.fixture
def imds() -> AwsImdsFake:
    return AwsImdsFake()


@pytest.fixture
def api() -> AwsApiFake:
    return AwsApiFake()


@pytest.fixture
def servers(imds: AwsImdsFake, api: AwsApiFake, aws_env: None) -> Iterator[tuple[ThreadedServer, ThreadedServer]]:
    with serve(imds.app()) as imds_server, serve(api.app()) as api_server:
        yield imds_server, api_server


def make_config(servers: tuple[ThreadedServer, ThreadedServer], **sections: Any) -> Any:
    imds_server, api_server = servers
    document: dict[str, Any] = {
        "metadata": {"providers": ["aws"], "aws_endpoint": imds_server.url, "timeout": "1s"},
        "pricing": {"aws": {"endpoint_url": api_server.url, "timeout": "5s"}},
    }
    for name, value in sections.items():
        document.setdefault(name, {}).update(value)
    return parse_config(document)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_start_resolves_identity_and_live_price(servers: Any, api: AwsApiFake, tmp_path: Path) -> None:
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH), state_directory=str(tmp_path))
    run(provider.start())
    context = provider.current()
    assert context.identity.source == "aws-imds"
    assert context.identity.instance_type == "p4d.24xlarge"
    assert context.price.source == "aws-pricing-api"
    assert context.price.dollars_per_hour == pytest.approx(21.957642)
    assert context.price.as_of == "2026-07-20"
    assert provider.status()[0] is True
    assert provider.metadata_status()[0] is True
    cache = json.loads((tmp_path / FILE_NAME).read_text())
    assert cache["entries"]["aws|p4d.24xlarge|us-east-1||on-demand"]["dollars_per_hour"] == pytest.approx(21.957642)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_fresh_cached_price_is_used_on_start_without_calling_aws(
    servers: Any, api: AwsApiFake, tmp_path: Path
) -> None:
    clock = ManualClock(epoch=EPOCH)
    run(ContextProvider(make_config(servers), clock, state_directory=str(tmp_path)).start())
    assert api.pricing_calls == 1

    clock.advance(3600)  # a restart an hour later
    second = ContextProvider(make_config(servers), clock, state_directory=str(tmp_path))
    run(second.start())
    assert api.pricing_calls == 1
    price = second.current().price
    assert (price.source, price.cached, price.as_of) == ("aws-pricing-api", True, "2026-07-20")

    clock.advance(86400 - 3600 + 1)  # the cached price is now a day old: refreshed
    run(second.refresh())
    assert api.pricing_calls == 2
    assert second.current().price.cached is False


def test_a_stale_cached_price_beats_the_table_when_aws_fails(servers: Any, api: AwsApiFake, tmp_path: Path) -> None:
    clock = ManualClock(epoch=EPOCH)
    api.products[0]["terms"]["OnDemand"]["REALP4DSKU000001.JRTCKXETXF"]["priceDimensions"][
        "REALP4DSKU000001.JRTCKXETXF.6YS6EN2CT7"
    ]["pricePerUnit"]["USD"] = "20.0000000000"
    run(ContextProvider(make_config(servers), clock, state_directory=str(tmp_path)).start())
    clock.advance(2 * 86400)
    api.deny_pricing = True
    provider = ContextProvider(make_config(servers), clock, state_directory=str(tmp_path))
    run(provider.start())
    price = provider.current().price
    assert (price.source, price.dollars_per_hour, price.as_of) == ("aws-pricing-api", 20.0, "2026-07-20")
    assert provider.errors()[("price", "access_denied")] == 1


def test_an_unwritable_state_directory_is_logged_and_ignored(
    servers: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH), state_directory=str(blocker / "state"))
    with caplog.at_level(logging.WARNING):
        run(provider.start())
    assert provider.current().price.source == "aws-pricing-api"
    assert provider.errors()[("price", "cache_write")] == 1
    assert any("cannot write the price cache" in r.getMessage() for r in caplog.records)


def test_a_corrupt_cache_file_is_ignored(servers: Any, api: AwsApiFake, tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{ half a file")
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH), state_directory=str(tmp_path))
    run(provider.start())
    assert provider.current().price.source == "aws-pricing-api"
    assert json.loads((tmp_path / FILE_NAME).read_text())["version"] == 1


def test_config_price_wins_and_lifecycle_override(servers: Any, api: AwsApiFake) -> None:
    config = make_config(servers, pricing={"instance_types": {"p4d.24xlarge": 13.5}, "lifecycle": "reserved"})
    provider = ContextProvider(config, ManualClock(epoch=EPOCH))
    run(provider.start())
    context = provider.current()
    assert (context.price.source, context.price.dollars_per_hour, context.price.lifecycle) == (
        "config",
        13.5,
        "reserved",
    )
    assert context.identity.lifecycle == "reserved"
    assert api.pricing_calls == 0


def test_reserved_without_a_rate_uses_the_list_price_and_warns(servers: Any, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(servers, pricing={"lifecycle": "savings-plan"})
    provider = ContextProvider(config, ManualClock(epoch=EPOCH))
    with caplog.at_level(logging.WARNING):
        run(provider.start())
    assert provider.current().price.source == "aws-pricing-api"
    assert any("no public hourly price" in r.getMessage() for r in caplog.records)


def test_spot_host_gets_the_spot_price_and_refreshes_on_the_spot_interval(
    servers: Any, imds: AwsImdsFake, api: AwsApiFake
) -> None:
    imds.meta["instance-life-cycle"] = "spot"
    api.spot_history = [spot_entry("9.876500", "2026-07-20T11:30:00.000Z")]
    clock = ManualClock(epoch=EPOCH)
    provider = ContextProvider(make_config(servers, pricing={"spot_refresh_interval": "30m"}), clock)
    run(provider.start())
    assert (provider.current().price.source, provider.current().price.dollars_per_hour) == ("aws-spot", 9.8765)
    clock.advance(600)
    run(provider.refresh())
    assert api.ec2_calls["DescribeSpotPriceHistory"] == 1  # not due yet
    api.spot_history.append(spot_entry("10.500000", "2026-07-20T12:10:00.000Z"))
    clock.advance(1201)
    run(provider.refresh())
    assert api.ec2_calls["DescribeSpotPriceHistory"] == 2
    assert provider.current().price.dollars_per_hour == pytest.approx(10.5)


def test_metadata_refresh_interval_is_respected(servers: Any, imds: AwsImdsFake) -> None:
    clock = ManualClock(epoch=EPOCH)
    provider = ContextProvider(make_config(servers, metadata={"refresh_interval": "1h"}), clock)
    run(provider.start())
    gets = imds.gets
    clock.advance(1800)
    run(provider.refresh())
    assert imds.gets == gets
    imds.meta["instance-type"] = "p5.48xlarge"  # not realistic, but proves the refresh reads again
    clock.advance(1801)
    run(provider.refresh())
    assert imds.gets > gets
    assert provider.current().identity.instance_type == "p5.48xlarge"
    assert provider.current().price.dollars_per_hour is not None


def test_describe_tags_fills_in_when_imds_tags_are_not_enabled(servers: Any, api: AwsApiFake) -> None:
    api.tags = {"i-0d4e5f6a7b8c9d0e1": {"Team": "ml-platform", "Workload": "shared-pool"}}
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH))
    run(provider.start())
    context = provider.current()
    assert dict(context.identity.tags) == {"Team": "ml-platform", "Workload": "shared-pool"}
    owner = context.attributor.host_owner(context.identity)
    assert (owner.team, owner.workload) == ("ml-platform", "shared-pool")
    assert api.ec2_calls == {"DescribeTags": 1}


def test_imds_tags_when_enabled_need_no_describe_tags(servers: Any, imds: AwsImdsFake, api: AwsApiFake) -> None:
    imds.tags = {"Team": "search"}
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH))
    run(provider.start())
    assert provider.current().attributor.host_owner(provider.current().identity).team == "search"
    assert "DescribeTags" not in api.ec2_calls


def test_describe_tags_denied_is_counted_under_metadata(servers: Any, api: AwsApiFake) -> None:
    api.deny_ec2 = True
    provider = ContextProvider(make_config(servers, attribution={"default_team": "platform"}), ManualClock(epoch=EPOCH))
    run(provider.start())
    assert provider.errors()[("metadata", "access_denied")] == 1
    assert provider.metadata_status()[0] is False
    context = provider.current()
    assert context.attributor.host_owner(context.identity).team == "platform"


def test_tag_rules_apply_to_processes(servers: Any, imds: AwsImdsFake) -> None:
    imds.tags = {"Project": "llm-finetune", "Team": "research"}
    config = make_config(
        servers,
        attribution={
            "rules": [
                {
                    "match": {"user": "svc-*", "tag:Project": "llm-*"},
                    "team": "llm-serving",
                    "workload": "{tag:Project}",
                },
            ]
        },
    )
    provider = ContextProvider(config, ManualClock(epoch=EPOCH))
    run(provider.start())
    attributor = provider.current().attributor
    owner = attributor.process_owner(ProcessReading(pid=1, used_memory_bytes=1, user="svc-recsys"))
    assert (owner.team, owner.workload) == ("llm-serving", "llm-finetune")
    assert attributor.process_owner(ProcessReading(pid=2, used_memory_bytes=1, user="alice")).team == ""


def test_start_is_bounded_by_both_timeouts_when_everything_is_slow(
    imds: AwsImdsFake, api: AwsApiFake, aws_env: None
) -> None:
    imds.delay = 0.1  # answers, slowly: each request 0.1 s
    api.delay = 30.0
    with serve(imds.app()) as imds_server, serve(api.app()) as api_server:
        config = parse_config(
            {
                "metadata": {"providers": ["aws"], "aws_endpoint": imds_server.url, "timeout": "1s"},
                "pricing": {"aws": {"endpoint_url": api_server.url, "timeout": "500ms"}},
            }
        )
        provider = ContextProvider(config, ManualClock(epoch=EPOCH))
        started = time.monotonic()
        run(provider.start())
        took = time.monotonic() - started
    assert took < 1.0 + 0.5 + 3.0  # both timeouts plus a loaded machine's delays; the API takes 30 s
    context = provider.current()
    assert context.identity.source == "aws-imds"
    assert context.price.source == "builtin"
    assert provider.errors()[("price", "timeout")] == 1


def test_errors_and_status_for_the_self_metrics(servers: Any, api: AwsApiFake) -> None:
    api.products = []
    provider = ContextProvider(make_config(servers), ManualClock(epoch=EPOCH))
    run(provider.start())
    known, duration = provider.status()
    assert known is True  # the built-in table still prices it
    assert duration >= 0
    assert dict(provider.errors()) == {("price", "no_match"): 1}
    assert provider.current().price.source == "builtin"
