"""The `mailplan` commands, one module per family; `mailplan/cli.py` assembles them."""
