"""Device-side failures, sent back to the host as `{"error": {kind, message, hint}}` records."""


class ProfilerError(Exception):
    """A failure the user can fix: the host turns it into an EdgepruneError with the same line."""

    def __init__(self, kind, message, hint=""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint

    def record(self):
        return {"error": {"kind": self.kind, "message": self.message, "hint": self.hint}}


class RuntimeUnavailable(ProfilerError):
    """The requested runtime (or a provider of it) is not installed or cannot run here."""

    def __init__(self, message, hint=""):
        super().__init__("runtime_unavailable", message, hint)
