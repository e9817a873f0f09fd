"""The module each Dramatiq worker process imports: it sets the process up."""

from worker.app import setup

broker = setup()
