"""Stage 2-4: clean, pseudonymise, segment and build the fine-tuning set (the `dataset` command)."""
