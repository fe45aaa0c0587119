"""Generic mesh: identity, handshake, wire messages, topology, routing. Imports nothing from
``overlay`` or ``agent``."""
