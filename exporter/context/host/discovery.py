"""Shared types for the cloud metadata clients (AWS IMDSv2, GCP metadata server, Azure IMDS)."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.context.model import HostIdentity

# Tag keys and values are bounded before they are kept: EC2 allows 50 tags of 128/256
# characters; anything larger is not a real tag and only costs memory.
MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024


class NotThisCloud(Exception):
    """The metadata service is absent or is not this provider's (connection refused, 404, timeout).

    Normal on a host of another cloud or on premises: never counted as an error.
    """


class MetadataFailure(Exception):
    """The provider's metadata service answered but the answer was unusable; `reason` is the error label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Discovered:
    """One provider's answer.

    `tags_enabled` is False when the service says instance tags are not exposed (AWS without
    InstanceMetadataTags=enabled): the EC2 DescribeTags fallback is then worth trying.
    """

    identity: HostIdentity
    tags_enabled: bool = True


def bounded_tags(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Sorted (key, value) pairs, at most MAX_TAGS, with keys and values cut to their bounds."""
    out: dict[str, str] = {}
    for key, value in pairs:
        key = key.strip()[:MAX_TAG_KEY]
        if key and len(out) < MAX_TAGS:
            out[key] = value[:MAX_TAG_VALUE]
    return tuple(sorted(out.items()))
