"""Tracking (`tracking.`): MLflow runs, and who owns them.

client     the MLflow store: runs, params, metrics, artifacts, stopping and heartbeats
liveness   a run's owner process, and whether it still lives
"""
