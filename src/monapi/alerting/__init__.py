"""Alerting: rule evaluation, alert states, notifications and the evaluator lease."""
