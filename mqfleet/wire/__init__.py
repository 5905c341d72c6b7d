"""The bus contract both sides share, without I/O: topics, message and reply types, adverts, operator signatures."""

from __future__ import annotations
