"""The refresh engine: lookups, flights, attempts, and the pure decisions beneath them."""
