"""The memcached store: the store, its layout and the ring of its pool."""
