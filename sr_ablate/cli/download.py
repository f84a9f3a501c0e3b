"""``sr-ablate download set5 set14 b100 [--root DIR]``: the standard SR sets (HR images only),
each archive checked against its sha256 (``sr_ablate.data.download``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sr_ablate import UserError
from sr_ablate.data.download import REGISTRY, fetch, registry_entry, url_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sr-ablate download",
                                 description="Download standard SR sets (HR images only).")
    ap.add_argument("names", nargs="*", metavar="name", help=", ".join(REGISTRY))
    ap.add_argument("--root", type=Path,
                    help="default: $SR_ABLATE_DATA or ~/.cache/sr_ablate/datasets")
    ap.add_argument("--force", action="store_true", help="download and extract again")
    ap.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive (one name)")
    ap.add_argument("--list", action="store_true", help="list the known datasets")
    args = ap.parse_args(argv)
    try:
        if args.list:
            for name, e in REGISTRY.items():
                print(f"{name:12} {e['target']:15} {e['format']:7} "
                      f"{'sha256' if e['sha256'] else 'tofu':6} {url_of(name)}")
            return 0
        if not args.names:
            raise UserError("name a dataset to download, e.g. sr-ablate download set5 "
                            "(--list shows them all)")
        if args.sha256 and len(args.names) > 1:
            raise UserError("--sha256 applies to one archive; download one name at a time with it")
        for name in args.names:
            registry_entry(name)
        for name in args.names:
            dest = fetch(name, args.root, args.force, sha256=args.sha256)
            print(f"use it: python -m sr_ablate data=folder data.root={dest}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
