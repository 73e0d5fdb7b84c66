"""Stage 5: plan and fine-tune (the `plan` and `train` commands)."""
