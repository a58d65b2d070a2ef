"""The ingest error family, and how the queue treats each kind.

Every failure in turning a document into records is one of two kinds:

- `TransientError`: the world is briefly unwell (the embedder is down, answers 5xx, times out,
  or lacks its model while the daemon pulls it). The job waits with backoff and is retried
  forever; nothing is dropped. The message says why it waits.
- `PermanentError`: this input will never work (the content cannot be extracted, the embedder
  rejects it with a 400). After a few attempts the job is marked failed, with the message.
"""

from __future__ import annotations

__all__ = [
    "EmbedderRejected",
    "EmbedderUnavailable",
    "ExtractionError",
    "IngestError",
    "InvalidDocument",
    "ModelMismatch",
    "ModelNotFound",
    "PermanentError",
    "QueueClosed",
    "TransientError",
]


class IngestError(Exception):
    """Root of every error the ingest package raises on purpose."""


class TransientError(IngestError):
    """Worth retrying later: the job waits with backoff, forever."""


class PermanentError(IngestError):
    """Will not succeed by waiting: the job fails after a few attempts."""


class InvalidDocument(PermanentError, ValueError):  # noqa: N818
    """A document with a missing or malformed field."""


class ExtractionError(PermanentError, ValueError):
    """No usable text could be extracted from the content."""


class EmbedderUnavailable(TransientError, ConnectionError):  # noqa: N818
    """The embedding server did not answer, timed out, or answered 5xx."""


class ModelNotFound(TransientError, LookupError):  # noqa: N818
    """The embedding server lacks the model; transient because the daemon pulls it."""


class EmbedderRejected(PermanentError, ValueError):  # noqa: N818
    """The embedding server refused the input (HTTP 400): retrying will not help."""


class ModelMismatch(PermanentError, ValueError):  # noqa: N818
    """A table holds vectors from another embedding model or dimension."""


class QueueClosed(IngestError, RuntimeError):  # noqa: N818
    """The queue was closed; open a new one."""
