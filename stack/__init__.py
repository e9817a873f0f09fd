"""The tooling around the worker: the local twin of the compose stack, the processes it
starts, the load generator, the alert receiver, the capacity planner and the fleet helpers
that tests and benchmarks use. A worker replica never imports it."""
