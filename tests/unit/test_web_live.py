"""The dashboard's fan-out of the coordinator's feed, and what its pages check and show, without a server: a stream
that stops reading is closed and never blocks the feed, the caps refuse with 503/429, a lost backlog asks every page
to reload; bad query parameters are refused naming them; anonymous views keep public state only."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mqfleet.coordinator.feed import Feed, FeedItem, FeedKind
from mqfleet.lifecycle import JobStatus
from mqfleet.web import live, views
from mqfleet.web.live import RESYNC, FanOut, StreamRefusedError
from mqfleet.wire.replies import JobDetail, ProgressPoint, Worker
from mqfleet.wire.topics import Role, Topics, encode

T = Topics("p")


def test_the_feed_offers_public_topics_only_and_costs_nothing_unfollowed() -> None:
    feed = Feed(T)
    seen: list[FeedItem] = []
    feed.published(T.events, b"{}")  # nobody follows: dropped at once
    feed.follow(seen.append)
    for topic in (T.events, T.job_state("j1"), T.coordinator_status, T.reply("cli-1"), T.control("h"), T.work,
                  T.rpc(Role.QUERY, "c", "jobs")):
        feed.published(topic, b'{"x":1}')
    feed.lines_accepted("j1", 2, ["a", "b"])
    feed.host_changed("h")
    assert [(i.kind, i.key) for i in seen] == [(FeedKind.EVENT, ""), (FeedKind.JOB_STATE, "j1"), (FeedKind.STATUS, ""),
                                              (FeedKind.LINES, "j1"), (FeedKind.HOST, "h")]
    assert seen[3].payload == encode({"job_id": "j1", "attempt": 2, "lines": ["a", "b"]})


def test_a_stream_that_stops_reading_is_closed_without_blocking_and_the_others_get_everything() -> None:
    async def run() -> None:
        fan = FanOut(max_streams=10, max_per_client=10)
        fan.bind(asyncio.get_running_loop())
        slow = fan.open("a", frozenset({FeedKind.JOB_STATE}), lambda i: True)
        picky = fan.open("b", frozenset({FeedKind.JOB_STATE}), lambda i: i.key == "j7")
        items = [FeedItem(FeedKind.JOB_STATE, f"j{n}", b"{}") for n in range(live.STREAM_QUEUE + 50)]
        # from another thread, as the coordinator's dispatcher calls it: never waits
        def feed_all() -> None:
            for item in items:
                fan(item)

        thread = threading.Thread(target=feed_all)
        thread.start()
        thread.join(5)
        assert not thread.is_alive()
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert fan.dropped == 1 and fan.open_streams == 1
        assert slow.queue.get_nowait() is None  # the slow one is told to end
        assert picky.queue.get_nowait() == items[7] and picky.queue.empty()

    asyncio.run(run())


def test_streams_past_the_caps_are_refused_with_503_and_429_and_a_closed_one_frees_its_place() -> None:
    fan = FanOut(max_streams=3, max_per_client=2)
    kinds = frozenset({FeedKind.HOST})
    first = fan.open("a", kinds, lambda i: True)
    fan.open("a", kinds, lambda i: True)
    with pytest.raises(StreamRefusedError) as per_client:
        fan.open("a", kinds, lambda i: True)
    assert per_client.value.status == 429
    fan.open("b", kinds, lambda i: True)
    with pytest.raises(StreamRefusedError) as overall:
        fan.open("c", kinds, lambda i: True)
    assert overall.value.status == 503
    fan.close(first)
    fan.open("c", kinds, lambda i: True)


def test_a_backlog_the_loop_could_not_take_asks_every_page_to_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "PENDING_MAX", 5)

    async def run() -> None:
        fan = FanOut(max_streams=10, max_per_client=10)
        fan.bind(asyncio.get_running_loop())
        stream = fan.open("a", frozenset({FeedKind.HOST}), lambda i: True)
        for n in range(8):  # the loop is busy here: nothing is delivered until it awaits
            fan(FeedItem(FeedKind.HOST, f"h{n}", b""))
        await asyncio.sleep(0.01)
        assert stream.queue.get_nowait() is RESYNC

    asyncio.run(run())


def test_query_parameters_that_are_not_what_the_page_takes_are_refused_naming_them() -> None:
    for args, name in ((("bogus", None, None, None, None), "status"), ((None, None, "1e3", None, None), "after"),
                       ((None, None, "-1", None, None), "after"), ((None, None, None, "up", None), "order"),
                       ((None, None, None, None, "501"), "limit"), ((None, "*" * 201, None, None, None), "name")):
        with pytest.raises(views.BadInputError, match=name):
            views.JobsQuery.parse(*args)
    query = views.JobsQuery.parse("running", "lr-*", "42", "oldest", "20")
    assert query.link(after=None) == "?status=running&name=lr-%2A&order=oldest&limit=20"


def test_anonymous_views_keep_public_state_only_and_chart_labels_lose_markup() -> None:
    worker = Worker(id="h", online=True, draining=True, advert={"os": "linux"}, slots=2, slots_used=1, jobs=["j"],
                    advert_error="latest advert refused: x", usage=None)
    shown = views.public_worker(worker)
    assert (shown.draining, shown.advert_error, shown.jobs, shown.advert) == (False, None, ["j"], {"os": "linux"})
    job = JobDetail(id="j", name="n", status=JobStatus.RUNNING, spec={"hyper": {"secret": 1}}, outputs=["x"],
                    progress_history=[ProgressPoint(attempt=1, seq=1, ts=1.0, report={"epoch": 1, "loss": 0.5})])
    public = views.public_job(job)
    assert public.spec == {} and public.outputs == [] and public.progress_history == job.progress_history
    assert views.progress_series(job.progress_history) == {"loss": [[1.0, 0.5]]}
    assert views.label("<b>acc</b>") == "?b?acc?/b?"
