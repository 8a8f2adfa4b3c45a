"""Programs built on ferrule, run from the repository root (`make example`); not part of
the installed package."""
