"""Queue processing: route, rules, local delivery, hand-off to the delivery wing."""
