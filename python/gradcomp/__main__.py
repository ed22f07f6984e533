"""``python -m gradcomp <command>``: ``probe`` (see gradcomp.probe)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    commands = {"probe"}
    if not argv or argv[0] not in commands:
        print(
            "usage: python -m gradcomp probe [options]   (under torchrun; --help for options)",
            file=sys.stderr,
        )
        return 2
    from gradcomp import probe

    return probe.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
