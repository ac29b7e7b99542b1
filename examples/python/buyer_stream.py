"""The official Python SDK (payments-py) as the buyer of a streamed answer.

Usage: NVM_BACKEND_URL=<backend> python buyer_stream.py <url of POST /chat> <subscriber key>

Gets the 402, mints an access token with the SDK for the envelope's plan and agent,
pays, reads the server-sent events as they arrive, and prints one JSON line: the words
received, when the first came, and the receipt of the last `payment-response` event.
"""
import base64, json, os, sys, time
import requests
from payments_py import Payments, PaymentOptions

url, key = sys.argv[1], sys.argv[2]
first = requests.post(url, json={"query": "python"})
assert first.status_code == 402, first.status_code
envelope = json.loads(base64.b64decode(first.headers["payment-required"]))
accepted = envelope["accepts"][0]
payments = Payments(PaymentOptions(environment="custom", nvm_api_key=key))
token = payments.x402.get_x402_access_token(accepted["planId"], accepted["extra"].get("agentId"))["accessToken"]
started = time.monotonic()
response = requests.post(url, json={"query": "python"}, headers={"payment-signature": token}, stream=True)
assert response.status_code == 200, response.status_code
words, first_word_at, event, receipt = 0, None, None, None
for line in response.iter_lines(decode_unicode=True):
    if line.startswith("event:"):
        event = line[6:].strip()
    elif line.startswith("data:"):
        if event == "payment-response":
            receipt = json.loads(base64.b64decode(line[5:].strip()))
        else:
            words += 1
            first_word_at = first_word_at or time.monotonic() - started
    elif not line:
        event = None
print(json.dumps({"words": words, "first_word_after_s": round(first_word_at, 3),
                  "total_s": round(time.monotonic() - started, 3), "receipt": receipt}))
