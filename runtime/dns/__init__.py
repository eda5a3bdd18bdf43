"""DNS look-ups: MX and addresses for delivery, answers for the receiving checks."""
