"""The `kt` command's entry point (and `python -m kt`): kt.cli's `main`, with a Ctrl-C, a SIGTERM or a SIGHUP
during its imports said.

kt.cli's own imports (click, rich) take the command's first ~0.15 s; a Ctrl-C there printed a traceback, and a
SIGTERM killed the command without a word, where either a moment later prints one line. A Ctrl-C that breaks a
module's import later on (numpy's) is said as one too, whatever error that import leaves behind. Only the
standard library is imported here.
"""

import contextlib
import signal
import sys


def _terminated(signum, frame):
    # until kt.cli's own handler is in place (it says what a command kept, too); a hung-up terminal may no
    # longer take the line
    with contextlib.suppress(OSError, ValueError):
        print(f"kt: terminated ({signal.Signals(signum).name})", file=sys.stderr)
    sys.exit(128 + signum)


_interrupted = []  # set by a Ctrl-C, which then goes on as Python's own handler goes (KeyboardInterrupt)


def _interrupt(signum, frame):
    _interrupted.append(signum)
    raise KeyboardInterrupt


def main():
    signal.signal(signal.SIGTERM, _terminated)
    hangup = signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN  # nohup ignores it: so do we
    if hangup:
        signal.signal(signal.SIGHUP, _terminated)
    if (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):  # not where Ctrl-C is ignored (nohup, &)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from kt.cli import main as cli

        return cli()  # says `kt: interrupted` itself from the moment its command starts
    except KeyboardInterrupt:
        print("kt: interrupted", file=sys.stderr)
        sys.exit(130)
    except ModuleNotFoundError as exc:
        if _interrupted:
            print("kt: interrupted", file=sys.stderr)
            sys.exit(130)
        if (exc.name or "").partition(".")[0] != "triton":
            raise
        from kt.codegen.emit import no_triton  # a command that needs Triton where there is none (macOS)

        print(f"kt: error: {no_triton('this command')}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        # a Ctrl-C inside a module's import (numpy's, as a command's first use of kt.api loads it) leaves it
        # half made: what fails next is a RecursionError, an AttributeError or an ImportError, not the
        # KeyboardInterrupt, and printed a traceback of 60 lines
        if _interrupted:
            print("kt: interrupted", file=sys.stderr)
            sys.exit(130)
        raise
    finally:
        # the command has ended, and Python's exit runs its atexit callbacks (torch's among them): a Ctrl-C
        # now was raised inside one, a traceback after the command's last line (exit code 0). Ctrl-C is
        # ignored from here; SIGTERM takes its default action (the process ends at once, 143, no
        # traceback: it still stops an exit that hangs)
        if signal.getsignal(signal.SIGINT) is _interrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if hangup:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
