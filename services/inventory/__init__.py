"""Inventory service: products, stock, reservations.

Each request runs in one transaction, the request's session: a reservation takes every item's stock
or, when it raises, none. The reservation routes are called by the orders service.
"""
