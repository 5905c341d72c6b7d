"""The MQTT client: the only paho importer (`connection.py`) and the paho-free parts it is built from, the RPC client."""

from __future__ import annotations
