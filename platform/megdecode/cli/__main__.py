"""`python -m megdecode.cli ARGS` runs the `megdecode` command."""

from megdecode.cli import main

if __name__ == "__main__":
    main()
