"""The diagnostic job's checks and verdict."""
