"""
What a stopping process does in which order (L{RefresherdService.stopService}),
on a fake reactor: a request under way when the stop begins is answered with
the engine still running, so that a lookup in the store at that moment may
still start its fetch (it would otherwise be refused as "shutting down").
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from refresherd.core.refresher import Refresher
from refresherd.http.site import LimitedSite
from refresherd.metrics import metrics_for
from refresherd.run.services import Engine, RefresherdService, ThreadPools
from refresherd.stores.memory import MemoryStore
from tests.unit.test_site import AbortableTransport, RecordingResource, finish, lose


def stopping_service() -> tuple[
    MemoryReactorClock, Refresher, RefresherdService, LimitedSite, RecordingResource
]:
    clock = MemoryReactorClock()
    refresher = Refresher(MemoryStore(clock), {}, clock, "rfd", metrics_for(["job"]))
    resource = RecordingResource()
    resource.hang = True
    site = LimitedSite(resource, lambda method, path: 1024, reactor=clock)
    port = clock.listenTCP(0, Factory())
    service = RefresherdService(Engine(refresher, ThreadPools()), [port], [site])
    service.startService()
    return clock, refresher, service, site, resource


def request_under_way(site: LimitedSite) -> tuple[Any, AbortableTransport]:
    """A connection whose request the site's resource has not answered yet."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = AbortableTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    return channel, transport


def test_the_engine_stops_only_once_the_requests_under_way_are_answered() -> None:
    clock, refresher, service, site, resource = stopping_service()
    channel, transport = request_under_way(site)
    stopped = service.stopService()
    assert not stopped.called
    assert not refresher.flights.stopping  # a fetch this request needs may still start
    clock.advance(5.0)
    assert not refresher.flights.stopping
    finish(resource.pending[0])
    assert transport.disconnecting  # closed after its answer: the process is stopping
    lose(channel)
    assert stopped.called
    assert refresher.flights.stopping


def test_a_request_never_answered_holds_the_stop_up_for_the_drain_timeout_only() -> None:
    clock, refresher, service, site, resource = stopping_service()
    channel, transport = request_under_way(site)
    stopped = service.stopService()
    clock.advance(refresher.drain_timeout - 0.01)
    assert not refresher.flights.stopping
    clock.advance(0.01)
    assert refresher.flights.stopping  # then the connections are closed, answers first
    assert transport.disconnecting and not stopped.called
    lose(channel)
    assert stopped.called


def test_a_head_still_arriving_does_not_hold_the_engine_up() -> None:
    clock, refresher, service, site, resource = stopping_service()
    channel, transport = request_under_way(site)
    slow = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    slow_transport = AbortableTransport()
    slow.makeConnection(slow_transport)
    slow.dataReceived(b"GET /x HTT")  # and nothing more for now
    stopped = service.stopService()
    finish(resource.pending[0])
    lose(channel)
    assert refresher.flights.stopping  # at once, not after the drain timeout
    assert not stopped.called  # its connection is closed as the others, answers first
    assert slow_transport.disconnecting
    lose(slow)
    assert stopped.called
