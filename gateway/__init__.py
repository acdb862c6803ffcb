"""The API gateway: the only thing API consumers talk to.

A request passes the pure ASGI stages listed in `app.py` (`edge_pipeline`; the stages live in
`auth.py` and `edge/`), then a route of `routes/` (`Forward` rows: a caller dependency from
`deps.py`, then `proxy.Upstreams.forward` to one service). Everything the gateway owns while it
runs is one `GatewayState` (`state.py`), built in the lifespan in `app.py`; routes reach it through
`deps.py`, stages through a slot the lifespan fills.
"""
