"""mailplan: a mail server whose whole configuration is code. This package is its command."""
