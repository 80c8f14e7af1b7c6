"""healthd: continuous health monitoring for container workloads."""

# The single source of the version (pyproject reads it): importlib.metadata would cost the
# daemon several megabytes of resident memory just to learn its own version.
__version__ = "0.1.0"
