"""Webhooks service: webhook endpoints, events, delivery attempts, the delivery worker."""
