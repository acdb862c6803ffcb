"""The API gateway: the only thing API consumers talk to."""
