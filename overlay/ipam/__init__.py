"""Address management: block ownership (ring), pod addresses (pool), persistence (store)."""
