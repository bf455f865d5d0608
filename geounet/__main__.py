"""``python -m geounet`` (and ``torchrun -m geounet``) runs the command line."""

from geounet.cli.main import main

if __name__ == "__main__":
    main()
