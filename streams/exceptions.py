"""Exceptions of the domain core: one base, narrow subclasses."""

from __future__ import annotations


class CallpulseError(Exception):
    """Base of every callpulse error."""


class EventValidationError(CallpulseError):
    """An event (or a whole message) was rejected; ``reason`` is one of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class ConfigError(CallpulseError):
    """A configuration value is invalid; the message is one plain sentence naming the setting."""
