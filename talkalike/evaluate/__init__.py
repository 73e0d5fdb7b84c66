"""Stage 6: measure how much the twin sounds like the persona (the `eval`, `tune-generation` and A/B commands)."""
