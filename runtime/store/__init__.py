"""Durable storage: the queue (spool), the intake journal, Maildir writes, durable files."""
