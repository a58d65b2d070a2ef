"""Vector storage for Satchel: the `VectorStore` contract and its implementations.

This package imports nothing else of Satchel's. `SQLiteStore` is the default backend; the
filter language lives in `store.filter`.
"""

from store.base import (
    DimensionMismatch,
    InvalidFilter,
    InvalidQuery,
    InvalidRecord,
    InvalidTableName,
    Record,
    ScoredRecord,
    StoreClosed,
    StoreError,
    TableExists,
    UnknownTable,
    VectorStore,
)
from store.sqlite import SQLiteStore

__all__ = [
    "DimensionMismatch",
    "InvalidFilter",
    "InvalidQuery",
    "InvalidRecord",
    "InvalidTableName",
    "Record",
    "SQLiteStore",
    "ScoredRecord",
    "StoreClosed",
    "StoreError",
    "TableExists",
    "UnknownTable",
    "VectorStore",
]
