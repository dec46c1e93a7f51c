"""The README's command table names every option of every command (it had left out a third of them)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from kt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def table_rows() -> dict[str, str]:
    """{"kt costmodel fit": the row's usage cell} for each row of the README's command table."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| (`kt [^|]*) \|", line.replace("\\|", "/"))  # the usage cell, `...`, `...`
        if match:
            usage = match[1].strip("`")
            words = []
            for word in usage.split()[1:]:
                if not re.fullmatch(r"[a-z]+", word):
                    break
                words.append(word)
            rows["kt " + " ".join(words)] = usage
    return rows


def commands(group: click.Group, prefix: str = "kt"):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def test_every_command_and_option_is_in_the_readmes_command_table():
    rows = table_rows()
    missing = {}
    for path, command in commands(main):
        if path not in rows:
            missing[path] = ["(no row)"]
            continue
        names = [
            option
            for param in command.params
            if isinstance(param, click.Option) and not param.hidden
            for option in param.opts + param.secondary_opts
            if option.startswith("--") and option != "--help"
        ]
        absent = [name for name in names if not re.search(rf"{re.escape(name)}(?![-\w])", rows[path])]
        if absent:
            missing[path] = absent
    assert not missing, missing


def test_kt_tunes_help_says_what_the_readme_says_of_its_files_and_out_folder():
    """Its usage line made OP_YAML look required (--from-model alone works), and --out's help put artifacts in
    DIR/artifacts/<name>/ where they go to DIR/<name>/; the cache folder's $XDG_CACHE_HOME step was left out."""
    from click.testing import CliRunner

    text = " ".join(
        CliRunner().invoke(main, ["tune", "--help"], prog_name="kt", terminal_width=200).output.split()
    )
    assert text.startswith("Usage: kt tune [OPTIONS] [OP_YAML]...")
    assert "receives each op's artifact, as DIR/<name>/" in text and "artifacts/<name>" not in text
    assert "else $XDG_CACHE_HOME/kt, else ~/.cache/kt" in text
