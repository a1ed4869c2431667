"""The read side of clickwatch: the FastAPI dashboard, API and metrics (issue 4 and 5)."""
