"""agp-mesh security: identity keys, trust store, ZAP, tokens, RBAC and end-to-end boxes.

One module per job, imported by name (no re-exports here):
``keys`` (Curve25519 identities), ``trust`` (enrolled and revoked keys), ``zap`` (CURVE
authentication, fail-closed), ``jwt`` / ``clients`` / ``tokens`` / ``token_http`` (OAuth2
client-credentials tokens), ``patterns`` / ``rbac`` (access policy), ``e2e`` / ``replay`` /
``topic_keys`` (payload sealing the router cannot open).
"""
