"""Requests on rpc/<role>/<client>/<verb>: checked at the boundary (reply namespace, retained, size,
request id, the fields of the verb's request type: mqfleet/wire/verbs.py), answered once (the reply memory), run under the one lock in one transaction, and
followed by what changed being published after commit (docs/SECURITY.md, "Replies").

The requests that arrive together are run as one group (docs/RELIABILITY.md, "Group commit"): queued
while the dispatcher has more messages waiting, then run in one transaction, each in its own
savepoint, committed once; their replies are published only after that commit, and what they
changed (events, retained states, nudges) after their replies."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from mqfleet import defaults
from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.coordinator.manifest_keeper import return_freed_memory
from mqfleet.coordinator.verbs.context import Request
from mqfleet.coordinator.verbs.handlers import HANDLERS, Handling
from mqfleet.errors import (
    AmbiguousError,
    InternalError,
    ManifestError,
    MqfleetError,
    StateStoreError,
    UnavailableError,
    UnknownVerbError,
)
from mqfleet.mqtt.inbox import Handler, Message
from mqfleet.wire.codec import Wire
from mqfleet.wire.replies import reply_json
from mqfleet.wire.signing import check_not_replayed, verify_request
from mqfleet.wire.topics import Role, Verb, decode, encode, error
from mqfleet.wire.verbs import VERBS, Envelope

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")

#: Requests run in one transaction at most: every reply of a group waits for its commit, so a longer
#: group would make its first requests (renewals come first) wait too long.
GROUP_MAX = 16


class Answer(NamedTuple):
    """A request's reply: its JSON (for the metrics) and the bytes published, and remembered, as one
    encoding (a claim's grant carries the job's spec: encoding it twice was a few percent of a claim)."""

    json: Wire
    payload: bytes


def answer(reply: Wire) -> Answer:
    return Answer(reply, encode(reply))


class RequestGroup:
    """What a group of requests (or one request alone) leaves for after its commit and its replies."""

    def __init__(self) -> None:
        #: requests that committed something: their nudges follow the commit
        self.committed: list[Request[Any]] = []
        #: log lines written inside the group: queued again if its commit fails
        self.lines: list[tuple[str, int, list[str]]] = []


class RequestDispatch(CoordinatorCore):
    """The coordinator's request dispatcher (a part of `Coordinator`)."""

    def _on_request(self, msg: Message) -> None:
        parsed = self.topics.parse_rpc(msg.topic)
        if parsed is None:
            return
        role_name, client, verb_name = parsed
        try:
            role = Role(role_name)
        except ValueError:
            self._drop_request(msg, f"unknown role level {role_name!r}")
            return
        # Checked before anything else, so the coordinator never publishes where a sender chose:
        # a reply goes only to the requester's own reply namespace (docs/SECURITY.md, "Replies").
        if msg.retain:
            # A retained request would run again at every coordinator restart; it is removed from the
            # broker too. An empty one is a deletion (ours, when we share the subscription): nothing to do.
            if msg.payload:
                self._drop_request(msg, "it was published retained")
                self.clear_retained(msg)
            return
        if msg.response_topic is not None and not self.topics.is_reply_topic_allowed(role, client, msg.response_topic):
            self._drop_request(msg, f"its response topic {msg.response_topic[:200]!r} is outside "
                                    f"{self.topics.reply_namespace(role, client)}")
            return
        try:
            verb = Verb(verb_name)
        except ValueError:
            self._reply(msg, error(UnknownVerbError.code, f"no verb {role_name}/{verb_name}"))
            return
        wire = VERBS[verb]
        if wire.role is not role:
            allowed = wire.role.value
            self._reply(msg, error(UnknownVerbError.code, f"verb '{verb.value}' is sent on rpc/{allowed}/, not rpc/{role.value}/"))
            return
        try:
            # A manifest sent with `reload --file` may be up to MAX_MANIFEST_BYTES (docs/CLI.md); it is
            # escaped inside JSON, so the request is allowed twice that (still under the broker's 4 MiB).
            limit = 2 * defaults.MAX_MANIFEST_BYTES if verb is Verb.RELOAD else defaults.MAX_REQUEST_BYTES
            body = decode(msg.payload, max_bytes=limit)
            request_id = Envelope.from_wire(body).request_id
            # The request's fields, checked here once into the verb's request type for its handler.
            fields = wire.request.from_wire(body)
        except MqfleetError as e:
            self._reply(msg, error(e.code, str(e)))
            return
        req = Request(verb=verb, role=role, client=client, wire=body, body=fields, now=self.clock())
        spec = HANDLERS[verb]
        key = f"{role.value}/{client}/{verb.value}/{request_id}" if request_id and wire.remembered else ""
        if spec.prepare is not None:
            # Slow work (reading an artifact back) runs off the dispatcher thread.
            if key in self._in_flight:
                logger.info("request %s is still being handled; the redelivery waits for its reply", key)
                return
            if key:
                self._in_flight.add(key)
            self._verify_pool.submit(self._handle, msg, req, key)
            return
        waiting = self._waiting_requests
        if waiting and waiting[-1][1].verb is Verb.RENEW and verb is not Verb.RENEW:
            # Renewals come out of the inbox first: they commit and are answered without waiting for the claims.
            self.run_waiting_requests()
        self._waiting_requests.append((msg, req, key))
        if len(self._waiting_requests) >= GROUP_MAX:
            self.run_waiting_requests()

    def run_waiting_requests(self) -> None:
        """Run the requests queued since the last call (the connection calls this whenever no more messages
        wait): one alone as before, several as one group with one commit (group commit)."""
        batch, self._waiting_requests = self._waiting_requests, []
        if len(batch) == 1:
            self._handle(*batch[0])
        elif batch:
            self._handle_group(batch)

    def in_request_order(self, handler: Handler) -> Handler:
        """`handler`, run after the requests that arrived before its message (queued, not yet run)."""
        def run_in_order(msg: Message) -> None:
            self.run_waiting_requests()
            handler(msg)
        return run_in_order

    def _handle_group(self, batch: list[tuple[Message, Request[Any], str]]) -> None:
        started = time.perf_counter()
        group = RequestGroup()
        with self.lock:
            try:
                with self.state.transaction():
                    replies = [self._answer(req, key, group) for _, req, key in batch]
            except Exception as e:
                # The one commit failed: no request of the group left anything, remembered replies included.
                self.history.requeue(group.lines)
                logger.warning("a group of %d requests was rolled back: %s", len(batch), e)
                failed = (error(e.code, f"{e}; the coordinator answers again once its database is back: retry")
                          if isinstance(e, UnavailableError) else
                          error(InternalError.code, "the coordinator failed to commit this request; see its log"))
                replies = [answer(failed)] * len(batch)
                committed = False
            else:
                self.grouped_requests += len(batch)
                committed = True
            # Answered as soon as the commit holds their effects; the events, states and nudges follow.
            for (msg, _, _), reply in zip(batch, replies, strict=True):
                self._reply(msg, reply.payload)
            if committed:
                self._after_commit(group.committed)
        if self.metrics is not None:
            for (_, req, _), reply in zip(batch, replies, strict=True):
                self.metrics.observe_request(req.verb.value, reply.json, time.perf_counter() - started)

    def _answer(self, req: Request[Any], key: str, group: RequestGroup) -> Answer:
        """One request's reply, an `internal` error if it raised; in a group it runs in its own savepoint,
        so its failure undoes only its own writes."""
        try:
            return self._execute(req, key, HANDLERS[req.verb], group)
        except Exception:
            logger.exception("%s from %s failed", req.verb.value, req.client)
            return answer(error(InternalError.code, f"the coordinator failed to handle '{req.verb.value}'; see its log"))

    def _handle(self, msg: Message, req: Request[Any], key: str) -> None:
        started = time.perf_counter()
        alone = RequestGroup()  # its own transaction commits inside _answer, before the reply
        try:
            reply = self._answer(req, key, alone)
        finally:
            self._in_flight.discard(key)
        self._reply(msg, reply.payload)
        if alone.committed:
            with self.lock:
                # Read from the database in commit order: a request committed meanwhile on another
                # thread may have published these changes already, with its own.
                self._after_commit(alone.committed)
        del alone  # it holds the request as run: a reload's carries the prepared rows of every job
        if req.verb is Verb.RELOAD:
            # the parsed manifest (the prepared rows, local to _execute and `alone`) is garbage only now
            return_freed_memory()
        if self.metrics is not None:
            self.metrics.observe_request(req.verb.value, reply.json, time.perf_counter() - started)

    def _execute(self, req: Request[Any], key: str, spec: Handling[Any, Any], group: RequestGroup) -> Answer:
        try:
            return self._execute_once(req, key, spec, group)
        except UnavailableError as e:
            # Never remembered: the agent's retry (same request id) must run the request once the database is back.
            logger.warning("%s from %s not handled: %s", req.verb.value, req.client, e)
            return answer(error(e.code, f"{e}; the coordinator answers again once its database is back: retry"))

    def _execute_once(self, req: Request[Any], key: str, spec: Handling[Any, Any], group: RequestGroup) -> Answer:
        mac = ""
        if req.role is Role.OPERATOR:
            # Before the reply memory: a stored `ok` must never answer a request signed with the wrong token.
            try:
                mac = verify_request(self.config.operator_token, req.verb.value, req.wire, req.now)
            except MqfleetError as e:
                logger.warning("%s from %s refused: %s", req.verb.value, req.client, e)
                return answer(error(e.code, str(e)))  # not remembered: the sender may retry with the right token
        if key and (mac or spec.prepare is not None):
            # Before the replay check and the prepare step: a redelivery is neither a replay nor worth
            # reading an artifact back for. Other requests are looked up once, under the write lock below.
            remembered = self.state.remembered_reply(key)
            if remembered is not None:
                logger.info("request %s redelivered; answering with the remembered reply", key)
                return answer(remembered)
        try:
            if mac:
                check_not_replayed(self.state, mac, req.now)
            if spec.prepare is not None:
                req = dataclasses.replace(req, prepared=spec.prepare(self, req))
            with self.lock:
                # An ended attempt's lines are committed with its end: `completed` implies all of them on disk.
                lines = self.history.take_queued() if req.verb in (Verb.COMPLETE, Verb.FAIL) else []
                try:
                    with self.state.transaction():
                        self.history.write_batches(lines, self.log_max_lines)
                        # Under the write lock: the authoritative look-up (another coordinator may have
                        # answered a redelivery meanwhile).
                        again = self.state.remembered_reply(key) if key else None
                        if again is not None:
                            logger.info("request %s redelivered; answering with the remembered reply", key)
                            return answer(again)
                        reply = answer(reply_json(spec.handler(self, req)))
                        if key:
                            self.state.remember_reply(key, reply.payload, req.now)
                except BaseException:
                    self.history.requeue(lines)  # rolled back with the refusal: written by the next flush
                    raise
                # committed (alone, or with the group), answered, then published
                group.committed.append(req)
                group.lines.extend(lines)
            return reply
        except MqfleetError as e:
            if isinstance(e, StateStoreError):
                raise  # the database failed, not the request: never remembered (an outage is retried, the rest `internal`)
            refusal = error(e.code, str(e))
            if isinstance(e, ManifestError):
                refusal["problems"] = [{"place": p.place, "message": p.message} for p in e.problems]
            if isinstance(e, AmbiguousError) and e.candidates:
                refusal["candidates"] = [{"id": job_id, "name": name} for job_id, name in e.candidates]
            refused = answer(refusal)
            if key:
                self.state.remember_reply(key, refused.payload, req.now)
            level = logging.INFO if req.role is Role.QUERY else logging.WARNING
            logger.log(level, "%s from %s refused: %s", req.verb.value, req.client, e)
            return refused

    def _after_commit(self, reqs: Sequence[Request[Any]]) -> None:
        """Publish what the requests committed (once for a group), then nudge."""
        claimable = self._publish_changes()
        others: list[Request[Any]] = []
        for req in reqs:
            if req.verb is Verb.RELOAD:
                # Any host may have work now (changed jobs do not pass through an event). The states of
                # rewritten rows are found by the republisher's walk, which apply_manifest asked for.
                self.nudge(req.verb.value, req.now)
            elif req.verb is Verb.UNDRAIN:
                self.nudge(req.verb.value, req.now, hosts=[req.body.host])  # a HostRequest (wire/verbs.py)
            else:
                others.append(req)
        if others:
            reason = "+".join(dict.fromkeys(r.verb.value for r in others))
            self._nudge_for(claimable, reason, others[-1].now)

    def _is_renewal(self, topic: str) -> bool:
        parsed = self.topics.parse_rpc(topic)
        return parsed is not None and parsed[0] == Role.AGENT.value and parsed[2] == Verb.RENEW.value

    def _drop_request(self, msg: Message, why: str) -> None:
        """Count and log (one line, rate-limited) a request that gets no reply at all."""
        with self._drop_lock:
            self.dropped_requests += 1
            count = self.dropped_requests
        if count <= 10 or count % 100 == 0:
            logger.warning("request on %s dropped (%d so far): %s", msg.topic[:200], count, why)

    def _reply(self, msg: Message, reply: Wire | bytes) -> None:
        if msg.response_topic:
            self.conn.reply(msg, reply)
        else:
            logger.debug("request on %s had no response topic; reply dropped", msg.topic)
