"""The separately deployed services behind the gateway."""
