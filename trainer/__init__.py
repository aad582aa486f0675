"""Trainer of stream-detector: builds datasets from behaviour text, fine-tunes and registers models."""
