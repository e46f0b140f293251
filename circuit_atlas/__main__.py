"""`python -m circuit_atlas` is the `circuit-atlas` command."""

from circuit_atlas.cli import main

main()
