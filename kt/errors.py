"""The errors kt raises for things a user can fix. Each carries one line that names the field."""


class KtError(Exception):
    """Base of every user-facing kt error: the CLI prints its message on one line and exits with code 2."""


class SpecError(KtError, ValueError):
    """An op.yaml (or an OpSpec built in Python) is invalid.

    `field` is the dotted path of the offending key (`shape.m`, `tune.objective`), `reason` what is wrong and
    what is allowed; `source` the file it came from, when there is one.
    """

    def __init__(self, field: str, reason: str, source: str | None = None):
        self.field, self.reason, self.source = field, reason, source
        parts = [part for part in (source, field) if part]
        super().__init__(": ".join([*parts, reason]))


class DeviceError(KtError):
    """A device profile is unknown or malformed, or a GPU is needed and none is present."""


class ArtifactError(KtError):
    """An artifact directory is missing, incomplete or does not match what was asked of it."""


class DatabaseError(KtError):
    """A tuning database cannot be opened, is not kt's, or was written by a newer kt."""


class ModelError(KtError):
    """A cost-model file is missing, not kt's, untrusted, or fitted for another device, feature set or library."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line (its whitespace runs joined), at most `limit` characters: how kt words an
    exception it reports rather than raises (a part of a bench, a worker's candidate, a user's factory)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:limit]
