"""Jinja2 rendering of kernel templates (the one place that knows where templates live)."""

from __future__ import annotations

import functools
import hashlib
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


@functools.cache
def template_version(name: str) -> str:
    """First 12 hex digits of the template's SHA-256: measurements are only reused for the same template."""
    return hashlib.sha256((TEMPLATES / name).read_bytes()).hexdigest()[:12]
