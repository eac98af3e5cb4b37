"""The console's own pages and endpoints, wired into the admin by `ConnectorAdmin.get_urls()` etc.

Each view here is called with the permission already checked by its wrapper in `admin.py` (or
`site.py`); the views check only what depends on the data (e.g. a change permission for a POST on
a page that viewers may read).
"""
