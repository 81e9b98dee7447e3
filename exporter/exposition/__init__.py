"""Exposition: a custom collector over the latest snapshot, rendered once and cached."""
