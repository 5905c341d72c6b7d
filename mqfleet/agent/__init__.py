"""The agent: claims jobs for one host, runs their trainers, uploads what they write."""

from __future__ import annotations
