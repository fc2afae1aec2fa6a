"""The model: its HTTP client, the retry policy, execution parameters, and the process
that serves it."""
