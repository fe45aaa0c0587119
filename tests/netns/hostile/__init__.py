"""Attacker tools for the hostile-peer lab tests: a stranger host on a lab's underlay
(``host``), a gossip peer that speaks our control protocol with the project's own encoders
(``intruder``), crafted sleeve frames and raw packets (``sleeve``), and what the tests watch
to tell whether an attack got through or was counted and logged (``evidence``)."""
