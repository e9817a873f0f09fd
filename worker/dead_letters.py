"""Dead letters: select, inspect, requeue and purge them (the library behind `worker dead-letters`)."""  # noqa: E501


def counter_key(namespace: str, action: str) -> str:
    """The hash of dead letters requeued or purged (``action``) so far, by queue."""
    return f"{namespace}:dead-letters.{action}"
