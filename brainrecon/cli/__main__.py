"""`python -m brainrecon.cli ...` (what torchrun launches): the `brainrecon` command."""

from brainrecon.cli.main import main

if __name__ == "__main__":
    main()
