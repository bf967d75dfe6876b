"""
The store contract (tests/store_contract.py), unchanged, against the memory
store on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from refresherd.stores.memory import MemoryStore
from tests.store_contract import StoreContract


class MemoryStoreContractTests(StoreContract, TestCase):
    """The store contract, against a L{MemoryStore} on a L{Clock}."""

    at_hand = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def make_store(self) -> MemoryStore:
        return MemoryStore(self.clock)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])
