"""Stage 7b: the terminal chat and the web/API server, both fed by talkalike.decode."""
