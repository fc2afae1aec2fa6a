"""Coordination: which instance does which file, leases, commits, completion records and
the state prefix."""
