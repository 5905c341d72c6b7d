"""The coordinator: the running parts `Coordinator` is built from; verbs/, tables/ and sql/ below it."""

from __future__ import annotations
