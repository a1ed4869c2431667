"""The read side of clickwatch: the FastAPI app with its pages, JSON API and Prometheus metrics, read from the store."""
