"""The stages of the gateway's edge pipeline, one module each. `gateway/app.py` puts them in order."""
