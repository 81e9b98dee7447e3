"""Context: who the host is, what it costs, and who owns each device."""
