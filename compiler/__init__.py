"""The compiler: turns a site in git into a validated, immutable plan."""
