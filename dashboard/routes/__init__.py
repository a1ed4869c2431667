"""The JSON routes, one router per resource: `api` (the /api/... contract) and `health` (/healthz)."""
