#!/usr/bin/env python3
"""Verifies a callback's Standard Webhooks headers with independent implementations:
the `standardwebhooks` reference library (v1, HMAC-SHA256) and `cryptography` (v1a, Ed25519).

usage: verify_standard_webhooks.py SECRET ED25519_X_B64URL ID TIMESTAMP SIGNATURE BODY
"""
import base64
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook

secret, x, msg_id, timestamp, signature, body = sys.argv[1:7]
headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
Webhook(secret).verify(body, headers)
print("v1 ok")

public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
signed = f"{msg_id}.{timestamp}.{body}".encode()
ed = [s.split(",", 1)[1] for s in signature.split(" ") if s.startswith("v1a,")]
if not ed:
    sys.exit("no v1a signature")
public.verify(base64.b64decode(ed[0]), signed)
print("v1a ok")
