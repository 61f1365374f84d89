"""Calls a Distance Matrix through Sluice's egress listener with Google's
own Maps client (`googlemaps`), and reports each call as one JSON line.

argv: the base URL, then one `<origins>x<destinations>` per call (e.g. 3x4).
"""

import json
import sys

import googlemaps

client = googlemaps.Client(
    key="AIzaSluiceTestKey", base_url=sys.argv[1], retry_over_query_limit=False
)
for shape in sys.argv[2:]:
    origins, destinations = (int(n) for n in shape.split("x"))
    try:
        client.distance_matrix(
            [f"origin {i}" for i in range(origins)],
            [f"destination {j}" for j in range(destinations)],
        )
        outcome = {"ok": True}
    except googlemaps.exceptions.HTTPError as e:
        outcome = {"ok": False, "raised": "HTTPError", "status": e.status_code}
    except Exception as e:  # what the SDK failed with instead of its own type
        outcome = {"ok": False, "raised": f"{type(e).__name__}: {e}"}
    print(json.dumps({"shape": shape, **outcome}), flush=True)
