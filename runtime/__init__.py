"""The runtime: executes a plan. Its decision modules are pure functions of the plan."""
