"""The dashboard page inlines the status snapshot in a script element: no value an agent
chose can close that element or open a comment in it, and the JSON reads the same."""

from __future__ import annotations

import json
import re

from router.control import render_index


def test_values_from_agents_cannot_break_out_of_the_inlined_status() -> None:
    hostile = ["</script><script>alert(1)</script>", "<!--<script>", "a<b>c</b>"]
    status = {"services": [{"name": "svc", "labels": {f"k{i}": v for i, v in
                                                      enumerate(hostile)}}]}
    page = render_index(status).decode()
    inline = [s for s in re.findall(r"<script[^>]*>(.*?)</script>", page, re.S)
              if "svc" in s]
    assert len(inline) == 1  # the status is inside exactly one script element, whole
    body = inline[0]
    assert "<" not in body  # no tag, closing tag or comment can start inside it
    start = body.index("{")
    decoded, _ = json.JSONDecoder().raw_decode(body[start:])
    assert decoded == status
