"""One-shot commands behind the CLI that need more than a plan: export."""
