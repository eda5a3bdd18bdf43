"""What a change between two plans does: pure functions of two `Plan`s (`mailplan diff`)."""
