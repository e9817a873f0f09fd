"""The worker's middleware, one concern a module; ``worker.broker`` assembles the stack."""
