"""Starts the metrics capability for a running Agent (filled in when agent.metrics lands)."""


def start_metrics(agent):
    return None
