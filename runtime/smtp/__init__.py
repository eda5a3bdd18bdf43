"""SMTP in: the session and its handler, the receiving checks, the site's own test cases."""
