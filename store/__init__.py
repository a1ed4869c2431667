"""The SQLite store: schema migrations, the writer (in the store process, or a thread of the proxy), the wire
messages from the proxy, readers for the dashboard, export and import."""
