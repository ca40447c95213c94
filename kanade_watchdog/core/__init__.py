"""Pure decisions, no I/O and no logging: desired state, the planner, data at stake, outcomes."""
