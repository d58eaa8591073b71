"""`python -m visiona` runs the command line."""

from visiona.cli import main

main()
