"""Cloud zone names, shared by the sources (neuron-monitor's instance_info) and the metadata clients."""

from __future__ import annotations

import re

# AWS: region (`us-gov-west-1`, `eusc-de-east-1`) plus a letter, or plus `-<local zone>`.
_AWS_ZONE = re.compile(r"^([a-z]{2,}(?:-[a-z]+)+-\d+)(?:[a-z]|-[a-z0-9-]+)$")
# GCP: region (`us-central1`, `northamerica-northeast1`) plus `-<letter>`.
_GCP_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")


def region_from_zone(zone: str) -> str:
    """The region a zone name belongs to; "" when `zone` is not a zone name.

    `us-east-1a` -> `us-east-1` and `us-east-1-bos-1a` (a Local or Wavelength Zone) -> `us-east-1`
    (AWS); `europe-west4-b` -> `europe-west4` (GCP). Azure zones ("1", "2") name no region.
    """
    for pattern in (_AWS_ZONE, _GCP_ZONE):
        match = pattern.match(zone)
        if match:
            return match.group(1)
    return ""
