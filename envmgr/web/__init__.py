"""The two pages (workspace at /, cost dashboard at /admin) and their static assets."""
