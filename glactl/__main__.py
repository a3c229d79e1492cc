"""`python -m glactl` runs the command-line tool (also the torchrun entry point)."""

from glactl.cli.app import main

if __name__ == "__main__":
    main()
