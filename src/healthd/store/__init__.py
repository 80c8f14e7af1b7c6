"""What healthd keeps on disk under the status directory."""
