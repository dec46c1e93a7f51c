"""The `kt` command's entry point (and `python -m kt`): kt.cli's `main`, with a Ctrl-C or a SIGTERM during its
imports said.

kt.cli's own imports (click, rich) take the command's first ~0.15 s; a Ctrl-C there printed a traceback, and a
SIGTERM killed the command without a word, where either a moment later prints one line. Only the standard
library is imported here.
"""

import signal
import sys


def _terminated(signum, frame):
    # until kt.cli's own handler is in place (it says what a command kept, too)
    print("kt: terminated (SIGTERM)", file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)


def main():
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from kt.cli import main as cli

        return cli()  # says `kt: interrupted` itself from the moment its command starts
    except KeyboardInterrupt:
        print("kt: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    sys.exit(main())
