"""
Implementations of L{refresherd.interfaces.IStore}, one module per store.

Each module offers its store class and a C{*_from_url} function that builds it
from a C{--store} URL; only C{refresherd.run.wiring} picks one.
"""
