"""``stack backtest``: what alert rules and Alertmanager routes would have done on history.

``model`` holds the values passed between the stages: the rule evaluation (``rules``)
turns a Prometheus' history into firing intervals, the Alertmanager simulation
(``alertmanager``) turns those into notifications, and the report sums them up per alert
and receiver.
"""
