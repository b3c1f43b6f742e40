"""kitaru's gcp stack (in progress)."""
