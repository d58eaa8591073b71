"""`python -m visiona` runs the command line (``--version`` without loading it)."""

from visiona.entry import main

main()
