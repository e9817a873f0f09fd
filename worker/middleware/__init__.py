"""The worker's middleware, one concern a module; ``worker.app`` assembles the stack."""
