"""`python -m defectgen.cli` (and `accelerate launch -m defectgen.cli`) runs the command line."""

from defectgen.cli import main

main()
