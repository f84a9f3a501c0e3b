"""``python -m sr_ablate``: the same as the ``sr-ablate`` command (``sr_ablate.cli.main``)."""
import sys

from sr_ablate.cli.main import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages) runs nothing
    sys.exit(main())
