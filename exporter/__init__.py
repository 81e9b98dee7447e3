"""accel-cost-exporter: live accelerator cost, idle spend and waste for Prometheus."""

__version__ = "0.1.0"
