"""Pages of the dashboard, one module per kind of page."""
