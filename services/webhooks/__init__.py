"""Webhooks service: webhook endpoints, events, delivery attempts, the delivery worker.

The registry's requests run in one transaction, the request's session. The relay (`relay.py`) pulls
the orders event feed in transactions of its own; it runs in the lifespan, in the service's context
(`context.py`).
"""
