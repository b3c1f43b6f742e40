"""Talking to a kitaru team server over HTTP: the login file (``kitaru login``), the state store a
worker uses with a ``runner`` key (``state = "https://host:port"``), and the client backend
``KitaruClient()`` switches to once logged in. The records travel as JSON (:mod:`._wire`)."""

from __future__ import annotations

__all__: list[str] = []
