"""Live trading through Interactive Brokers (``ib_async``, the optional ``ib`` extra)."""
