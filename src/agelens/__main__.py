"""`python -m agelens ...` runs the `agelens` command."""

from agelens.cli import main

main()
