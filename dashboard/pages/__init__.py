"""Server-rendered pages, one module per page; `common` holds what they share (templates, headers, errors).

Everything shown was captured from traffic and is hostile input: templates autoescape every value, and the
pages' own scripts build rows with textContent only. A strict Content-Security-Policy (no inline script)
backs that up, so the seq and filters reach the script through data- attributes.
"""
