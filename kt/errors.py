"""The errors kt raises for things a user can fix. Each carries one line that names the field."""

import contextlib
import contextvars
import re
import reprlib


class _Repr(reprlib.Repr):
    def repr_int(self, x, level):
        try:
            return super().repr_int(x, level)
        except ValueError:  # more than Python's 4,300 digits: repr() refuses to make the text
            return f"<an integer of {x.bit_length():,} bits>"


_SHORT = _Repr()  # attributes, not keywords: Python 3.11's Repr takes none
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 60, 60, 40
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4


def shown(value) -> str:
    """`repr(value)` cut short (nested containers at most two levels and four items deep, long strings and
    numbers elided): how an error message quotes what a user gave, whatever its size. YAML aliases can make a
    300-byte file a value whose whole repr takes gigabytes. On one line: a numpy array's repr breaks its rows over
    several."""
    return re.sub(r"\n\s*", " ", _SHORT.repr(value))  # a str's repr escapes its own line breaks


def key_text(key) -> str:
    """A user's key as a field path shows it (`shape.<key>`): as written where it is short printable text, else
    quoted (a key with a line break split the one-line error in two)."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else shown(key)


# Whether kt's command line is running a command (kt.cli sets it): how an error names an argument (`option`)
_command_line = False


# what a command calls kt's own options (`kt collect`'s budget is its --sample): `renamed_options`
_renamed: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "kt_renamed_options", default=()
)


@contextlib.contextmanager
def renamed_options(**names: str):
    """While a command runs whose options name kt's own otherwise (`kt collect`: budget="sample"), its
    messages name them so (`option`, `option_word`): kt collect's notes told the user to raise --budget, an
    option it has not."""
    token = _renamed.set(tuple({**dict(_renamed.get()), **names}.items()))
    try:
        yield
    finally:
        _renamed.reset(token)


def option_word(name: str) -> str:
    """kt's option `name` as the running command calls it, as a word in a sentence ("the budget (8)")."""
    return dict(_renamed.get()).get(name, name).replace("_", " ")


def option(name: str, value=None) -> str:
    """An argument as the user gave it: `--name VALUE` while kt's command line runs a command, `name=VALUE`
    (the value's repr) through the Python API, where the command line's flags named options nobody passed."""
    name = dict(_renamed.get()).get(name, name)
    if _command_line:
        return f"--{name.replace('_', '-')}" + ("" if value is None else f" {value}")
    return name + ("" if value is None else f"={value!r}")


@contextlib.contextmanager
def command_line():
    """While kt's CLI runs a command: errors name options as its flags (`option`)."""
    global _command_line
    before, _command_line = _command_line, True
    try:
        yield
    finally:
        _command_line = before


def on_command_line() -> bool:
    """Whether kt's command line is running a command (its errors name options as flags)."""
    return _command_line


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
    said = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {said}" if said else type(exc).__name__)[:limit]  # not "AttributeError: "


def counted(count: int, noun: str) -> str:
    """`count noun`, the noun in the plural but for one: "1 config", "3 configs"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
