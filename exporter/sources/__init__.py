"""Sources turn a device API into plain readings; they never compute money."""
