"""The coordinator's verb handlers: a request in, its typed reply out, inside the dispatcher's transaction."""

from __future__ import annotations
