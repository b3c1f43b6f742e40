"""kitaru's aws stack (in progress)."""
