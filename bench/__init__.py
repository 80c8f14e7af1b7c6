"""healthd's benchmark: the cost of monitoring N workloads, measured from outside the daemon.

Run ``python -m bench --help`` from the repository root; bench/README.md explains the columns.
"""
