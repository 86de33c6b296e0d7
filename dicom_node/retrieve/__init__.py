"""Query/retrieve against the PACS (C-FIND, C-MOVE, C-GET) for reprocessing."""
