"""Grafana dashboards of the worker fleet, written in Python with grafanalib.

``*.dashboard.py`` define the dashboards, ``common`` their shared panels and helpers,
``render`` writes ``generated/*.json`` (``make dashboards``). stack/dashboard_preview.py
draws PNGs from a live Prometheus (``make dashboards-preview``).
"""
