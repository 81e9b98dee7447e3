"""Host identity: cloud metadata (AWS IMDSv2, GCP, Azure) merged with the static config and source hints."""
