"""The artifact store: objects by sha256 in a folder or an S3 bucket, transfers by URL, tar+zstd bundles."""

from __future__ import annotations
