"""HTTP-shaped handlers: a request dict in, a Response out. No web framework needed."""
