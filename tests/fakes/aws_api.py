"""A fake AWS endpoint speaking the real wire protocols, for boto3 pointed at it by endpoint_url.

- Price List `GetProducts`: JSON 1.1 protocol. POST with `X-Amz-Target:
  AWSPriceListService.GetProducts` and `Content-Type: application/x-amz-json-1.1`; the answer is
  `{"FormatVersion": "aws_v1", "PriceList": ["<product JSON as a string>", ...], "NextToken": ...}`.
  Errors are HTTP 400 with `{"__type": "ThrottlingException", "message": ...}`. The fake honours
  the TERM_MATCH filters against each product's attributes, so a filter the client forgot lets a
  decoy product through and the test sees two matches.
- EC2 `DescribeSpotPriceHistory` and `DescribeTags`: the EC2 query protocol. POST form-encoded
  `Action=...&Version=2016-11-15&...`; the answer is XML in the
  `http://ec2.amazonaws.com/doc/2016-11-15/` namespace with a `requestId`; errors are
  `<Response><Errors><Error><Code>RequestLimitExceeded</Code>...` with status 503 (or 403 for
  UnauthorizedOperation).

Every request must carry a SigV4 `Authorization` header (boto3 signs with the fake credentials the
tests put in the environment); the credential scope's region is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")

# The TERM_MATCH filters (field -> value) that single out the real p4d.24xlarge Linux on-demand SKU
# among the decoys of p4d_catalogue(): what a correct client sends.
REAL_FILTERS = {
    "instanceType": "p4d.24xlarge",
    "regionCode": "us-east-1",
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "marketoption": "OnDemand",
    "operation": "RunInstances",
}
REAL_ATTRIBUTES = {
    "servicecode": "AmazonEC2",
    **REAL_FILTERS,
    "location": "US East (N. Virginia)",
    "licenseModel": "No License required",
    "usagetype": "BoxUsage:p4d.24xlarge",
    "vcpu": "96",
    "memory": "1152 GiB",
    "gpu": "8",
}


def make_product(usd: str, sku: str = "", **overrides: str) -> dict[str, Any]:
    """A Price List product in the real shape, with on-demand term JRTCKXETXF and rate 6YS6EN2CT7."""
    sku = sku or uuid.uuid4().hex[:16].upper()
    attributes = dict(REAL_ATTRIBUTES, **overrides)
    term = f"{sku}.JRTCKXETXF"
    return {
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": attributes},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "effectiveDate": "2026-07-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "sku": sku,
                    "termAttributes": {},
                    "priceDimensions": {
                        f"{term}.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "beginRange": "0",
                            "rateCode": f"{term}.6YS6EN2CT7",
                            "appliesTo": [],
                            "description": f"${usd} per On Demand Linux {attributes['instanceType']} Instance Hour",
                            "pricePerUnit": {"USD": usd},
                        }
                    },
                }
            }
        },
        "version": "20260720000000",
        "publicationDate": "2026-07-20T13:44:30Z",
    }


def p4d_catalogue() -> list[dict[str, Any]]:
    """The real p4d.24xlarge SKU next to decoys that each differ in one filtered attribute.

    A client that leaves out any one filter gets two products back (multi_match).
    """
    return [
        make_product("21.9576420000", sku="REALP4DSKU000001"),
        make_product("0.0320000000", sku="CAPBLOCKDECOY001", marketoption="CapacityBlock"),
        make_product("21.9576420000", sku="UNUSEDCRDECOY001", capacitystatus="UnusedCapacityReservation"),
        make_product("21.9576420000", sku="ALLOCCRDECOY0001", capacitystatus="AllocatedCapacityReservation"),
        make_product("23.7976420000", sku="WINDOWSDECOY0001", operatingSystem="Windows", operation="RunInstances:0002"),
        make_product("22.3176420000", sku="RHELDECOY0000001", operatingSystem="RHEL", operation="RunInstances:0010"),
        make_product("24.1536060000", sku="DEDICATEDDECOY01", tenancy="Dedicated"),
        make_product("31.0000000000", sku="SQLDECOY00000001", preInstalledSw="SQL Std"),
        make_product("21.9576420000", sku="LINUXSQLOPDECOY1", operation="RunInstances:0004"),
        make_product("24.1500000000", sku="OTHERREGIONDECOY", regionCode="eu-west-1", location="EU (Ireland)"),
        make_product("27.4470500000", sku="P4DESKU000000001", instanceType="p4de.24xlarge"),
    ]


@dataclass
class AwsApiFake:
    """State and behaviour switches of the fake; counters are read by the tests."""

    products: list[dict[str, Any]] = field(default_factory=p4d_catalogue)
    spot_history: list[dict[str, str]] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # instance id -> tags
    throttle_next: int = 0  # answer this many GetProducts calls with ThrottlingException
    ec2_throttle_next: int = 0  # answer this many EC2 calls with RequestLimitExceeded
    deny_pricing: bool = False
    deny_ec2: bool = False
    bad_body: bool = False  # GetProducts answers a body that is not JSON
    raw_price_list: list[str] | None = None  # answer these items whatever the filters
    delay: float = 0.0
    pricing_calls: int = 0
    ec2_calls: dict[str, int] = field(default_factory=dict)
    scopes: list[tuple[str, str]] = field(default_factory=list)  # (region, service) per request
    last_filters: list[dict[str, str]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        auth = request.headers.get("Authorization", "")
        scope = _SCOPE.search(auth)
        if not auth.startswith("AWS4-HMAC-SHA256") or scope is None:
            return web.json_response(
                {"__type": "MissingAuthenticationTokenException", "message": "no SigV4"}, status=403
            )
        self.scopes.append((scope.group(1), scope.group(2)))
        target = request.headers.get("X-Amz-Target", "")
        if target:
            return await self._pricing(request, target)
        return await self._ec2(request)

    # --- Price List (JSON 1.1) ------------------------------------------------------------------

    @staticmethod
    def _json_error(code: str, message: str, status: int = 400) -> web.Response:
        body = json.dumps({"__type": code, "message": message})
        return web.Response(status=status, text=body, content_type="application/x-amz-json-1.1")

    async def _pricing(self, request: web.Request, target: str) -> web.Response:
        self.pricing_calls += 1
        if request.content_type != "application/x-amz-json-1.1":
            return self._json_error("SerializationException", f"bad content type {request.content_type}")
        if target != "AWSPriceListService.GetProducts":
            return self._json_error("UnknownOperationException", target)
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return self._json_error("ThrottlingException", "Rate exceeded")
        if self.deny_pricing:
            return self._json_error("AccessDeniedException", "User is not authorized to perform: pricing:GetProducts")
        body = json.loads(await request.text())
        if body.get("ServiceCode") != "AmazonEC2" or body.get("FormatVersion") != "aws_v1":
            return self._json_error("InvalidParameterException", "ServiceCode/FormatVersion")
        filters = body.get("Filters", [])
        self.last_filters = filters
        if len(filters) > 50 or any(f.get("Type") != "TERM_MATCH" for f in filters):
            return self._json_error("InvalidParameterException", "Filters")
        if self.bad_body:
            return web.Response(
                text='{"FormatVersion": "aws_v1", "PriceList": [', content_type="application/x-amz-json-1.1"
            )
        if self.raw_price_list is not None:
            items = list(self.raw_price_list)
        else:
            items = [json.dumps(p) for p in self.products if _matches(p, filters)]
        max_results = int(body.get("MaxResults", 100))
        start = int(body.get("NextToken") or 0)
        page = items[start : start + max_results]
        answer: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": page}
        if start + max_results < len(items):
            answer["NextToken"] = str(start + max_results)
        return web.Response(text=json.dumps(answer), content_type="application/x-amz-json-1.1")

    # --- EC2 (query protocol, XML) --------------------------------------------------------------

    @staticmethod
    def _ec2_error(code: str, message: str, status: int) -> web.Response:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return web.Response(status=status, text=xml, content_type="text/xml")

    async def _ec2(self, request: web.Request) -> web.Response:
        form = await request.post()
        action = str(form.get("Action", ""))
        self.ec2_calls[action] = self.ec2_calls.get(action, 0) + 1
        if form.get("Version") != "2016-11-15":
            return self._ec2_error("InvalidParameterValue", "Version", 400)
        if self.ec2_throttle_next > 0:
            self.ec2_throttle_next -= 1
            return self._ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503)
        if self.deny_ec2:
            return self._ec2_error("UnauthorizedOperation", f"You are not authorized to perform: ec2:{action}", 403)
        if action == "DescribeSpotPriceHistory":
            return self._spot(form)
        if action == "DescribeTags":
            return self._tags(form)
        return self._ec2_error("InvalidAction", f"The action {action} is not valid for this web service.", 400)

    def _spot(self, form: Any) -> web.Response:
        types = {v for k, v in form.items() if k.startswith("InstanceType.")}
        products = {v for k, v in form.items() if k.startswith("ProductDescription.")}
        zone = form.get("AvailabilityZone")
        if not form.get("StartTime"):
            return self._ec2_error("MissingParameter", "StartTime", 400)
        items = []
        for entry in self.spot_history:
            if types and entry["instanceType"] not in types:
                continue
            if products and entry["productDescription"] not in products:
                continue
            if zone and entry["availabilityZone"] != zone:
                continue
            items.append("<item>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in entry.items()) + "</item>")
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSpotPriceHistoryResponse xmlns="{EC2_NS}">'
            f"<requestId>{uuid.uuid4()}</requestId><spotPriceHistorySet>{''.join(items)}</spotPriceHistorySet>"
            "<nextToken/></DescribeSpotPriceHistoryResponse>"
        )
        return web.Response(text=xml, content_type="text/xml")

    def _tags(self, form: Any) -> web.Response:
        resource_ids: set[str] = set()
        for key, value in form.items():
            match = re.fullmatch(r"Filter\.(\d+)\.Name", key)
            if match and value == "resource-id":
                n = match.group(1)
                resource_ids |= {v for k, v in form.items() if k.startswith(f"Filter.{n}.Value.")}
        items = []
        for instance_id in sorted(resource_ids):
            for key, value in self.tags.get(instance_id, {}).items():
                items.append(
                    f"<item><resourceId>{instance_id}</resourceId><resourceType>instance</resourceType>"
                    f"<key>{escape(key)}</key><value>{escape(value)}</value></item>"
                )
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeTagsResponse xmlns="{EC2_NS}">'
            f"<requestId>{uuid.uuid4()}</requestId><tagSet>{''.join(items)}</tagSet></DescribeTagsResponse>"
        )
        return web.Response(text=xml, content_type="text/xml")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
        return app


def _matches(product: dict[str, Any], filters: list[dict[str, str]]) -> bool:
    attributes = {k.lower(): str(v).lower() for k, v in product["product"]["attributes"].items()}
    return all(attributes.get(item["Field"].lower()) == str(item["Value"]).lower() for item in filters)


def spot_entry(
    price: str, timestamp: str, zone: str = "us-east-1a", instance_type: str = "p4d.24xlarge"
) -> dict[str, str]:
    """One DescribeSpotPriceHistory item as EC2 serialises it."""
    return {
        "instanceType": instance_type,
        "productDescription": "Linux/UNIX",
        "spotPrice": price,
        "timestamp": timestamp,
        "availabilityZone": zone,
    }
