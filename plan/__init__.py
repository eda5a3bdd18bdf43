"""The plan: the contract between the compiler and the runtime."""
