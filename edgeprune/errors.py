"""Errors a user can cause. No click import: library code raises these, the CLI prints them."""

from __future__ import annotations


class EdgepruneError(Exception):
    """A user-facing failure: one line saying what is wrong and one hint saying how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadInputError(EdgepruneError):
    """Bad input: unknown device, corrupt file, unreachable host or budget. Exit code 2."""

    exit_code = 2


class CheckFailedError(EdgepruneError):
    """A check or gate ran and failed. Exit code 1."""

    exit_code = 1


class DeviceError(BadInputError):
    """The device cannot do what was asked (missing runtime, unreachable, refused host key)."""
