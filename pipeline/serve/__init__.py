"""`vidcat serve`: the catalog's HTTP API and search page.

:mod:`.service` does the work (queues, results, thumbnails, media, the table's
description) over :class:`~pipeline.query.CatalogSearch`; :mod:`.app` is the FastAPI app;
:mod:`.media` sniffs uploads and streams video bytes; :mod:`.work` holds the bounded
queues; `web/` is the page (static files, no build step).
"""

from .service import SearchService, ServeConfig

__all__ = ["SearchService", "ServeConfig"]
