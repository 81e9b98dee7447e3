"""Fake cloud metadata services following their real protocols, for loopback tests.

- `AwsImdsFake`: IMDSv2. `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
  (1-21600, else 400) and refuses `X-Forwarded-For` (403); every GET needs a live token (401
  otherwise); `tags/instance` is 404 unless instance tags are enabled; paths not present are 404.
- `gcp_app`: the GCP metadata server (`Metadata-Flavor: Google` required, else 403; the answer
  carries the same header).
- `azure_app`: Azure IMDS (`Metadata: true` required, else 400; `X-Forwarded-For` refused).

`delay` makes every answer slow, to test that start-up does not wait for it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

P4D_IDENTITY = {
    "instance-type": "p4d.24xlarge",
    "instance-id": "i-0d4e5f6a7b8c9d0e1",
    "placement/region": "us-east-1",
    "placement/availability-zone": "us-east-1a",
    "instance-life-cycle": "on-demand",
}


@dataclass
class AwsImdsFake:
    """State of the fake IMDSv2; read its counters in assertions."""

    meta: dict[str, str] = field(default_factory=lambda: dict(P4D_IDENTITY))
    tags: dict[str, str] | None = None  # None: InstanceMetadataTags disabled (404)
    delay: float = 0.0
    token_puts: int = 0
    gets: int = 0
    unauthorized: int = 0
    bad_token_requests: int = 0
    _tokens: dict[str, float] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def revoke_tokens(self) -> None:
        """Forget every token (as after an instance stop/start): the next GET gets 401."""
        self._tokens.clear()

    async def _put_token(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if "X-Forwarded-For" in request.headers:
            return web.Response(status=403, text="Forbidden")
        ttl_text = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(ttl_text or "")
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            self.bad_token_requests += 1
            return web.Response(status=400, text="Bad Request")
        self.token_puts += 1
        token = f"AQAEA-fake-token-{next(self._counter)}=="
        self._tokens[token] = time.monotonic() + ttl
        return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    async def _get(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        self.gets += 1
        token = request.headers.get("X-aws-ec2-metadata-token", "")
        if self._tokens.get(token, 0.0) < time.monotonic():
            self.unauthorized += 1
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        if path == "tags/instance":
            if self.tags is None:
                return web.Response(status=404, text="Not Found")
            return web.Response(text="\n".join(self.tags))
        if path.startswith("tags/instance/"):
            key = path[len("tags/instance/") :]
            if self.tags is None or key not in self.tags:
                return web.Response(status=404, text="Not Found")
            return web.Response(text=self.tags[key])
        if path in self.meta:
            return web.Response(text=self.meta[path])
        return web.Response(status=404, text="Not Found")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._put_token)
        app.router.add_get("/latest/meta-data/{path:.*}", self._get)
        return app


@dataclass
class GcpFake:
    """The GCP metadata server for one instance."""

    machine_type: str = "projects/123456789/machineTypes/a2-highgpu-1g"
    zone: str = "projects/123456789/zones/us-central1-a"
    instance_id: str = "4520031799277581759"
    preemptible: str = "FALSE"
    delay: float = 0.0
    requests: int = 0

    async def _get(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        self.requests += 1
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        values = {
            "machine-type": self.machine_type,
            "zone": self.zone,
            "id": self.instance_id,
            "scheduling/preemptible": self.preemptible,
        }
        path = request.match_info["path"]
        headers = {"Metadata-Flavor": "Google"}
        if path not in values:
            return web.Response(status=404, text="Not Found", headers=headers)
        return web.Response(text=values[path], headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/computeMetadata/v1/instance/{path:.*}", self._get)
        return app


@dataclass
class AzureFake:
    """Azure IMDS for one VM."""

    compute: dict[str, object] = field(
        default_factory=lambda: {
            "vmSize": "Standard_ND96asr_v4",
            "location": "eastus",
            "zone": "2",
            "priority": "Spot",
            "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
            "tagsList": [{"name": "Team", "value": "vision"}, {"name": "Workload", "value": "train"}],
        }
    )
    delay: float = 0.0

    async def _get(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if request.headers.get("Metadata") != "true" or "X-Forwarded-For" in request.headers:
            return web.json_response({"error": "Bad request. Required metadata header not specified"}, status=400)
        if not request.query.get("api-version"):
            return web.json_response({"error": "Bad request. api-version was not specified"}, status=400)
        return web.Response(text=json.dumps(self.compute), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metadata/instance/compute", self._get)
        return app
