"""HTTP layer: thin views that parse input, call a service, and return a dict and a status."""
