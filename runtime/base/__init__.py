"""What every I/O wing shares: thread pools, and telling a client that went away."""
