"""Receiving: the storage SCP, its transport, receiver processes, the durable store's use,
study completion."""
