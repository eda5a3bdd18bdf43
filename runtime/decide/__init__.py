"""Pure decisions over the plan: addresses, routing, policy, replies, DSNs, lists, retries."""
