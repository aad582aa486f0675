"""Streaming anomaly detector for e-commerce click, search and order events."""
