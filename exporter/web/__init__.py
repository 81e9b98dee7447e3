"""The HTTP side: landing page, metrics, probes, TLS and basic auth."""
