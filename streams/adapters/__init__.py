"""Adapters: pure parsers from other systems' formats to canonical events."""
