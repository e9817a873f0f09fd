"""The brokers the worker runs on. ``redis`` holds every use of Dramatiq's private names
(its Redis consumer, dispatch script, key layout and log lines), so that a Dramatiq upgrade
that changes one breaks one module, and ``tests/test_dramatiq_pins.py`` names it."""
