"""Persistence behind a small interface; the in-memory store backs tests and demos."""
