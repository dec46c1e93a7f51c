"""Problem keys: the canonical text that names a problem in the tuning database (its identity column, indexed
and held in every row and claim), and the one rule that keeps it short: a block-sparse layout longer than its
digest is named by its SHA-256. Standard library only, so the database module (which the command line's help
loads) does not import numpy."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

DIGEST = "sha256:"  # how a problem's key names a long layout: this, then the layout's SHA-256 in hex
# a layout up to this long is named by itself (its digest would be no shorter)
KEYED_LAYOUT_CHARS = len(DIGEST) + 64


@functools.lru_cache(maxsize=64)
def layout_digest(text: str) -> str:
    """How a problem's key names the layout `text`: itself when it is no longer than its digest would be, else
    `sha256:` and its SHA-256. A layout is a bit per block (a 2**24-block grid's is 4 MiB of hex), and the key
    is a tuning database's identity column, indexed twice and held in every row and claim: a 16384-square W in
    16x16 blocks took 1.6 MB a row when the key held the whole layout (the database's layouts table now holds
    it once)."""
    if len(text) <= KEYED_LAYOUT_CHARS or text.startswith(DIGEST):
        return text
    return DIGEST + hashlib.sha256(text.encode("ascii")).hexdigest()


def split_layouts(data: Any) -> tuple[Any, dict[str, str]]:
    """`data` (a problem's fields, as `to_dict` gives them or JSON holds them; a sum's terms are nested in it)
    with each layout named by `layout_digest`, and the layouts so named, by digest."""
    named: dict[str, str] = {}

    def walk(value: Any, name: str | None = None) -> Any:
        if name == "layout" and isinstance(value, str):
            digest = layout_digest(value)
            if digest != value:
                named[digest] = value
            return digest
        if isinstance(value, dict):
            return {key: walk(item, key) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item) for item in value]
        return value

    return walk(data), named


def keyed_layouts(data: Any) -> Any:
    """A problem's fields with each layout named by `layout_digest`, for its key."""
    return split_layouts(data)[0]


def joined_layouts(data: Any, layout_of: Callable[[str], str]) -> Any:
    """`data` with each layout that a digest names given back: `layout_of(digest)` (the tuning database keeps
    each layout once, in its layouts table)."""
    if isinstance(data, dict):
        return {
            key: layout_of(item)
            if key == "layout" and isinstance(item, str) and item.startswith(DIGEST)
            else joined_layouts(item, layout_of)
            for key, item in data.items()
        }
    if isinstance(data, list):
        return [joined_layouts(item, layout_of) for item in data]
    return data


def problem_key(fields: dict[str, Any]) -> str:
    """The key of a problem whose fields (its family among them) are `fields`: JSON, sorted, no spaces, each
    layout named by `layout_digest`. `StructuredProblem.key` and `compact_key` both write it, so a migrated
    key is the one kt looks up."""
    return json.dumps(keyed_layouts(fields), sort_keys=True, separators=(",", ":"))


def compact_key(key: str) -> str:
    """A problem key as kt writes it (`StructuredProblem.key`) from one written before layouts were named by
    their digest (a database before schema 6, or a CSV it exported); other keys come back as they are."""
    if '"layout":"' not in key:
        return key
    try:
        data = json.loads(key)
    except ValueError:  # not a key kt wrote: left for the row's own checks
        return key
    return problem_key(data)
