"""`hxo`: the remote command line for CI jobs and operators away from the server.

It talks only to the REST API v1 (`HXO_URL`, `HXO_TOKEN`) with `requests` and draws progress
with `rich`; it never imports Django or the apps, so it runs on a machine without HXO's
settings. `manage.py hxo` stays for operators on the server; both exit with the same codes
(`hxo_cli.main.EXIT_*`).
"""
