"""Owners: process -> user / systemd unit / container / Kubernetes pod -> team, by the attribution rules."""
