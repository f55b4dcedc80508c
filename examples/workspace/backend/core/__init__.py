"""Cross-cutting pieces every other package may use: settings, errors, events, logging."""
