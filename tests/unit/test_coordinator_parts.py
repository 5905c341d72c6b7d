"""`Coordinator` is assembled from parts over `CoordinatorCore` (coordinator/core.py): every method the
core only declares for the parts must be defined by one of them, or a call would raise at run time."""

from __future__ import annotations

import inspect

from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.coordinator.service import Coordinator
from mqfleet.coordinator.verbs.context import HandlerContext


def declared_only() -> list[str]:
    """The core's methods whose body only raises NotImplementedError."""
    return [name for name, member in vars(CoordinatorCore).items()
            if inspect.isfunction(member) and "raise NotImplementedError" in inspect.getsource(member)]


def test_the_core_declares_the_methods_the_parts_share() -> None:
    assert {"_publish_changes", "nudge", "apply_manifest", "health"} <= set(declared_only())


def test_every_declared_method_is_defined_by_a_part() -> None:
    left = [name for name in declared_only() if getattr(Coordinator, name) is getattr(CoordinatorCore, name)]
    assert left == [], f"declared in CoordinatorCore but defined by no part of Coordinator: {left}"


def test_the_coordinator_offers_every_handler_context_member() -> None:
    wanted = [name for name in dir(HandlerContext) if not name.startswith("_")]
    wanted += list(getattr(HandlerContext, "__annotations__", {}))
    missing = [name for name in wanted if not hasattr(Coordinator, name) and name not in CoordinatorCore.__annotations__]
    assert missing == []
