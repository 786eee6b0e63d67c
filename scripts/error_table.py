"""Print the error-code page (docs/errors.md) from `pexir_tryon.errors.ERROR_KINDS`.

    python scripts/error_table.py           # print the page
    python scripts/error_table.py --write   # rewrite docs/errors.md
    python scripts/error_table.py --check   # exit 1 when docs/errors.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pexir_tryon.errors import error_table_markdown  # noqa: E402

DOC = ROOT / "docs" / "errors.md"

INTRO = """\
# Error codes

Every rejected request or input answers with one stable, machine-readable code. The HTTP API
sends it as `{"error": {"code": "...", "message": "..."}}` with the status below; the CLI prints
`error[<code>]: <message>` on stderr and exits with status 2; the batch job writes the code and
message into its results manifest. The message names the field and the limit involved; the
table says what to do about it. Codes are stable: new ones may be added, none is renamed or
removed.

This page is generated from `pexir_tryon/errors.py` by `python scripts/error_table.py --write`;
a test fails when the two differ.
"""


def render_page() -> str:
    return f"{INTRO}\n{error_table_markdown()}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {DOC.relative_to(ROOT)} is out of date")
    args = parser.parse_args(argv)
    page = render_page()
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(page, encoding="utf-8")
        return 0
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if current != page:
            print(f"{DOC.relative_to(ROOT)} is out of date; run: python scripts/error_table.py --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
