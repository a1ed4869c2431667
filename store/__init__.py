"""The SQLite store: schema migrations and the single writer thread."""
