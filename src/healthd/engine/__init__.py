"""The monitoring engine: the pure policy, the scheduler that feeds it, the daemon that wires."""
