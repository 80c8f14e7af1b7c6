"""Workload configuration: the schema, reading a directory of files, and editing it."""
