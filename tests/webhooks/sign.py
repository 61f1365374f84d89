"""Signs webhooks with the providers' own libraries, for Sluice's tests.

Reads JSON lines on stdin: {"scheme", "secret", "body", "id", "timestamp"}
and writes one JSON object of headers per line on stdout. The body is
signed exactly as given (UTF-8).
"""

import datetime
import json
import sys


def sign(request):
    scheme = request["scheme"]
    secret = request["secret"]
    body = request["body"]
    timestamp = int(request.get("timestamp") or 0)
    when = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    msg_id = request.get("id", "")
    if scheme == "StandardWebhooks":
        from standardwebhooks import Webhook

        signature = Webhook(secret).sign(msg_id, when, body)
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    if scheme == "Svix":
        from svix.webhooks import Webhook

        signature = Webhook(secret).sign(msg_id, when, body)
        return {"svix-id": msg_id, "svix-timestamp": str(timestamp), "svix-signature": signature}
    if scheme == "Stripe":
        import stripe

        header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
        return {"stripe-signature": header}
    if scheme == "Slack":
        from slack_sdk.signature import SignatureVerifier

        signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
        return {"x-slack-request-timestamp": str(timestamp), "x-slack-signature": signature}
    if scheme == "GitHub":
        from githubkit.webhooks import sign as github_sign

        return {"x-hub-signature-256": github_sign(secret, body, method="sha256"), "x-github-delivery": msg_id}
    raise SystemExit(f"unknown scheme {scheme}")


def main():
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(sign(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
