"""The dashboard's static files (HTML, JavaScript, CSS), served by vesper.api.dashboard.

Hand-written and loaded as they are: no build step, nothing fetched from elsewhere.
"""
