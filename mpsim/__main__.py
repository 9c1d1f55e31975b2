"""``python -m mpsim``: the same command line as the ``mpsim`` script."""

from mpsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
