"""The service's routes by concern, one `APIRouter` a module, all included by `create_app`:
`analyze` (/v1/analyze, /v1/analyze/batch), `meta` (/health, /ready, /v1/models, /metrics),
`compat` (/predict, /lambda, /healthz), `jobs` (/v1/jobs), `live` (the /v1/live WebSocket)
and `web` (the page and its examples). Their shared dependencies live in `agelens.server.deps`.
"""
