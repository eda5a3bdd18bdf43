"""Delivery out: the logical queues and their scheduler, SMTP out, PIPE."""
