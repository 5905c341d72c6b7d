"""The dispatcher's inbox: first in, first out, with urgent items (the coordinator's renewals) ahead."""

from __future__ import annotations

import threading

from mqfleet.mqtt.inbox import Inbox


def test_items_come_out_in_order_with_urgent_ones_first() -> None:
    inbox = Inbox()
    for item in ("claim-1", "claim-2"):
        inbox.put(item)
    inbox.put("renew-1", urgent=True)
    inbox.put("claim-3")
    inbox.put("renew-2", urgent=True)
    assert [inbox.get() for _ in range(5)] == ["renew-1", "renew-2", "claim-1", "claim-2", "claim-3"]


def test_get_waits_for_an_item_put_by_another_thread() -> None:
    inbox = Inbox()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(inbox.get()))
    reader.start()
    inbox.put(None)
    reader.join(timeout=5)
    assert not reader.is_alive() and got == [None]
