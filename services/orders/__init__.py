"""Orders service: orders, their status history, the outbox of order events.

Placing an order spans several transactions with calls to the users and inventory services in
between (`upstream.py`), so every function of `service.py` opens its own transactions
(`OrdersContext.transaction`) rather than using the request's session. Its lifespan adds the orders
context and runs the recovery task (`recovery.py`).
"""
