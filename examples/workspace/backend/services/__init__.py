"""Use cases: each service owns one aggregate, validates, persists and publishes events."""
