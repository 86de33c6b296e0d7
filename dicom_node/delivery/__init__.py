"""Delivering results: the durable outbox and its senders (C-STORE, STOW-RS, MLLP)."""
