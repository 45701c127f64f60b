"""`python -m server [--host H] [--port P] [--data-dir D]`: the same as `tandem serve`."""

from __future__ import annotations

import sys

from server.tools.cli import app


def main() -> None:
    app(args=["serve", *sys.argv[1:]], prog_name="python -m server")


if __name__ == "__main__":
    main()
