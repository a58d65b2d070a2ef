"""Turning content into records: documents, chunking, embedders, the durable queue, feeds, pages.

Imports `store`'s public names only; never `daemon`. (Filled in by the ingest pipeline work.)
"""
