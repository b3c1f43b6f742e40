"""The durable core (private): flows, checkpoints, the execution context, waits and the runtime."""
