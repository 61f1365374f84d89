"""Calls Sluice's egress listeners with the providers' official SDKs and
reports what each SDK raised, one JSON line per (sdk, expected code).

argv: pairs of `<sluice error code> <base url>`; every URL answers with that
code. SDK retries are off: each call must see Sluice's answer itself.
"""

import json
import sys
import time

import easypost
import openai
import requests
import stripe


def stripe_call(url):
    client = stripe.StripeClient(
        "sk_test_sluice", base_addresses={"api": url}, max_network_retries=0
    )
    try:
        client.v1.customers.retrieve("cus_sluice")
    except stripe.StripeError as e:
        # Stripe reads `error.code` into the exception for 4xx only; the
        # body it parsed stays on it for the app to read.
        code = e.code or (e.json_body or {}).get("error", {}).get("code")
        return {"sdk_error": True, "status": e.http_status, "code": code,
                "message": e.user_message or str(e), "raised": type(e).__name__}


def openai_call(url):
    client = openai.OpenAI(api_key="sk-sluice", base_url=url, max_retries=0)
    try:
        client.models.retrieve("gpt-sluice")
    except openai.APIStatusError as e:
        return {"sdk_error": True, "status": e.status_code, "code": e.code,
                "message": e.message, "raised": type(e).__name__}


def easypost_call(url):
    client = easypost.EasyPostClient("EZTK_sluice", api_base=url)
    # EasyPost has no retry setting: its session retries 3 times, honouring
    # Retry-After on 503 and 429. Mounted over it, an adapter without.
    client._requests_session.mount(url, requests.adapters.HTTPAdapter(max_retries=0))
    try:
        client.address.retrieve("adr_sluice")
    except easypost.errors.ApiError as e:
        return {"sdk_error": True, "status": e.http_status, "code": None,
                "message": e.message, "raised": type(e).__name__}


SDKS = {"stripe": stripe_call, "openai": openai_call, "easypost": easypost_call}

args = sys.argv[1:]
for code, url in zip(args[::2], args[1::2]):
    for sdk, call in SDKS.items():
        started = time.monotonic()
        try:
            outcome = call(url) or {"sdk_error": False, "raised": None}
        except Exception as e:  # what the SDK failed with instead of its own type
            outcome = {"sdk_error": False, "raised": f"{type(e).__name__}: {e}"}
        outcome["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps({"sdk": sdk, "expected": code, **outcome}), flush=True)
