"""The ``onlyone`` command that ``pip install`` puts on the PATH."""

import signal
import sys


def main() -> None:
    """Runs the command with ``sys.argv`` and exits with its status."""
    from ._onlyone import main as run

    # The command handles signals as the Rust binary does: Python's own
    # Ctrl-C handler would only set a flag nobody reads while it runs, and
    # the signals Python ignores (SIGXFSZ; SIGPIPE, which Rust ignores too
    # and resets for its children) would stay ignored in the command run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    sys.exit(run(["onlyone", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
