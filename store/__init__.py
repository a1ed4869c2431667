"""The SQLite store: schema migrations, the store process and its link from the proxy (the wire messages, the
bounded inboxes on both ends), the writer that owns the write connection and the counters, readers for the
dashboard, export and import (docs/store.md)."""
