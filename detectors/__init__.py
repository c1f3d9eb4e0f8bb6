"""Analysis that turns observations into alerts. Pure: no sockets, no asyncio, no HTTP."""
