"""Orders service: orders, their status history, the outbox of order events."""
