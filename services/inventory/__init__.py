"""Inventory service: products, stock, reservations."""
