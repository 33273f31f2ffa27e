"""`python -m resnet_repro`: the CLI (also what torchrun starts on each rank)."""

from .cli import main

main()
