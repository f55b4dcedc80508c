"""The dashboard's HTML views: thin, typed function views over the same services and selectors
as the REST API. Every view checks capabilities itself; partial endpoints check exactly what
their page checks, so a fragment requested directly never shows more than the page would."""
