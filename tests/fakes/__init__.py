"""Loopback fakes of cloud services (metadata, AWS APIs) for the tests."""
