"""All rich output of the CLI: fleet and job views, charts, terminal-safe text."""

from __future__ import annotations
