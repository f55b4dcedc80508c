"""Batch jobs run outside request handling: backfills and nightly reports."""
