"""A client of the router's OAuth2 token endpoint, as a test uses it (status and JSON body)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request


def token_with(url: str, client_id: str, secret: str) -> tuple[int, dict]:
    """POST client_credentials with HTTP Basic auth; (status, body) whatever the status."""
    creds = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    req = urllib.request.Request(
        url, data=b"grant_type=client_credentials", method="POST",
        headers={"Authorization": "Basic " + base64.b64encode(creds.encode()).decode(),
                 "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())
