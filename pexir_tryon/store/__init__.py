"""Temporary uploads, results, retention, purge, export and the content-free request audit."""

from .crypto import BlobDecryptError
from .records import PurgeReport, ResultRecord, SweepReport, UploadRecord
from .store import TryOnStore
from .sweeper import purge_user_command, run_sweeper

__all__ = [
    "BlobDecryptError",
    "PurgeReport",
    "ResultRecord",
    "SweepReport",
    "TryOnStore",
    "UploadRecord",
    "purge_user_command",
    "run_sweeper",
]
