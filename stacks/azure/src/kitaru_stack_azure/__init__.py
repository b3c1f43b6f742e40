"""kitaru's azure stack (in progress)."""
