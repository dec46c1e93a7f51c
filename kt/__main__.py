"""The `kt` command's entry point (and `python -m kt`): kt.cli's `main`, with a Ctrl-C during its imports said.

kt.cli's own imports (click, rich) take the command's first ~0.15 s; a Ctrl-C there printed a traceback, where
one a moment later prints one line. Only the standard library is imported here.
"""

import sys


def main():
    try:
        from kt.cli import main as cli

        return cli()  # says `kt: interrupted` itself from the moment its command starts
    except KeyboardInterrupt:
        print("kt: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    sys.exit(main())
