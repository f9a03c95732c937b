"""Command-line flags declared once, YAML configs, and the checks flags share."""
