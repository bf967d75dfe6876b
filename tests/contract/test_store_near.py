"""
The store contract (tests/store_contract.py), unchanged, through a near cache
in front of the memory store, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from refresherd.interfaces import IStore
from refresherd.stores.memory import MemoryStore
from refresherd.stores.near import NearCache
from tests.store_contract import StoreContract


class NearMemoryContractTests(StoreContract, TestCase):
    """The store contract, unchanged, through a near cache in front of the memory store."""

    at_hand = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def make_store(self) -> IStore:
        return NearCache(MemoryStore(self.clock), self.clock)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
