"""The mitmproxy side of clickwatch: recognise tracking calls and hand them to the store."""
