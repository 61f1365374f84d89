"""The Stripe SDK's ordinary calls through Sluice to stripe-mock.

argv: the sidecar's egress URL. Prints one JSON object: what the calls
returned, and the Idempotency-Key of the POST as the SDK's response
exposes it (Stripe echoes the one it received).
"""

import json
import sys

import stripe

client = stripe.StripeClient(
    "sk_test_app_never_sent", base_addresses={"api": sys.argv[1]}, max_network_retries=0
)
customer = client.v1.customers.create(params={"email": "sluice@example.com"})
fetched = client.v1.customers.retrieve(customer.id)
listed = client.v1.charges.list(params={"limit": 3})
print(json.dumps({
    "created": customer.id,
    "fetched": fetched.id,
    "listed": len(listed.data),
    "idempotency_key": customer.last_response.headers.get("Idempotency-Key"),
}))
