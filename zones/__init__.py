"""DNS for a mail site: records generated from a plan, rendered as zone snippets, checked live."""
