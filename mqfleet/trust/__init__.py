"""The broker's deployment, rendered and never run: certificates, the ACL file, mosquitto.conf."""

from __future__ import annotations
