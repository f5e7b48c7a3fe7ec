"""One self-contained HTML page per run (``sci-diffusion report``, and ``--report`` on the domains' verbs).

The core holds what every domain's page shares: the page itself (``page.py``: the template, the inlined
CSS and scripts, the run's data embedded as JSON, gzip + base64 where it is large, vendored JavaScript
libraries with their licences) and the browser side (``assets/report.js``: a sortable, filterable table, the
decoding of the embedded data, the page's readiness flag). A domain builds its own page from these and
names the function that does it in its plug-in (``domains.Reporter``); ``command.py`` is the verb, which
asks each domain whether a path is its run output. The page opens offline from a file, with no server.
"""
