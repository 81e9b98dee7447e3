"""Prices: config > cloud price API > built-in dated table, with an on-disk cache and sanity bounds."""
