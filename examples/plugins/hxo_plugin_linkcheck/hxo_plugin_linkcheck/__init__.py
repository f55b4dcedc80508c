"""hxo-plugin-linkcheck: the `docs.linkcheck` job kind for HXO, as a plugin.

`hxo_plugin_linkcheck.components` registers the partitioner `by_doc_pages` and the executor
`docs_linkcheck` when HXO imports it, through the `hxo.plugins` entry point this package
declares (or `HXO_PLUGINS=hxo_plugin_linkcheck.components`). The kind itself is registry data:
a registry admin adds it in the admin, or imports `kind.json` with `manage.py hxo_registry
import`. See docs/plugins.md in the HXO checkout.
"""

from __future__ import annotations
