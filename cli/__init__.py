"""The `clickwatch` command: a thin layer turning library errors into messages and exit codes."""
