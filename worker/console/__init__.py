"""``worker console``: the operations console, web pages on the dead-letter library.

- ``settings``: the worker's settings plus ``CONSOLE_*`` (the password is required).
- ``security``: login lockout, sessions, CSRF tokens, security headers, the access log.
- ``reads``: what the overview, job log and rate-limiter pages read from Redis.
- ``replay``: requeues and purges run in a background thread, their progress in memory.
- ``web``: the Starlette application (routes, forms, templates).
- ``server``: the command, served by uvicorn.
"""
