"""A borrowed machine's owner: its working hours (`hours.py`) and the local switch `mqfleet agent pause`
talks to (`switch.py`). Pure, the standard library only, so the CLI's `agent pause` starts fast; the policy
itself, which the bus carries, is `mqfleet.wire.owner` (docs/OPERATIONS.md, "Owner policies").
"""
