"""`accel-cost-exporter report`: a fleet waste audit and rightsizing report read from a Prometheus API."""
