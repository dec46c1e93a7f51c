"""Jinja2 rendering of kernel templates (the one place that knows where templates live)."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug in kt, not an empty string in a kernel
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(template: str, **variables) -> str:
    return _environment().get_template(template).render(**variables)


INCLUDE = re.compile(rb'{%-?\s*include\s+"([^"]+)"')


@functools.cache
def template_version(name: str) -> str:
    """First 12 hex digits of the SHA-256 of the template and of every template it includes, in the order they
    are included: measurements are only reused for the same code."""
    digest = hashlib.sha256()
    for text in _with_includes(name):
        digest.update(text)
    return digest.hexdigest()[:12]


def _with_includes(name: str) -> list[bytes]:
    text = (TEMPLATES / name).read_bytes()
    return [text, *(part for included in INCLUDE.findall(text) for part in _with_includes(included.decode()))]
